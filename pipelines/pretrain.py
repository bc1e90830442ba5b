"""Pretrain CLIP on WebDataset shards with Ray Train (the job entry point).

    python pipelines/pretrain.py --train-data 'RUN/curation/shards/{00000..00009}.tar' \
        --model tiny --steps 200 --batch-size 64 --workers 2 --out runs/pretrain/tiny
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/pretrain.py --config pretrain.yaml

Steps: 1. read the config (``--config`` JSON/YAML, then command-line flags win); a
``--train-data`` part that matches no file, or a ``--resume-from`` that is no checkpoint (its
``.pt`` file, its directory or a run directory), ends the run here with one line;
2. train the caption BPE on the shards' captions (or load ``--tokenizer``), save it in OUT;
3. run ``pretrain.train.train_loop_per_worker`` under ``TorchTrainer`` with ``--workers`` workers
(gloo on CPU, nccl with ``--use-gpu``), ``FailureConfig(max_failures)``, checkpoints in
``OUT/checkpoints/`` (``--workers 0`` runs the same loop in this process, without Ray);
4. write ``OUT/result.json`` (last metrics, checkpoint path). Metrics: ``OUT/metrics.jsonl``,
``OUT/loss.png``. Uses ``pipelines.runtime.init_ray`` (so ``$RAY_ADDRESS`` from ``ray job
submit`` is honoured). On a multi-node cluster OUT must be shared storage.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script, sys.path[0] is pipelines/, where this file would shadow the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields, replace

from pipelines.cli import add_config_flags, field_default, field_help, require_shards
from pipelines.runtime import configure_environment, init_ray
from pretrain.checkpoint import CheckpointError, read_result, resolve_checkpoint, step_checkpoints, write_result
from pretrain.train import BALANCE_MODES, PRECISIONS, PretrainJob, TrainConfig, train_loop_per_worker
from storage.files import is_dir, is_local
from storage.layout import CHECKPOINTS, PretrainLayout, shard_pattern


JOB_KEYS = {f.name for f in fields(PretrainJob)} - {"train"}  # the job's own fields in the flat config
REQUIRED = ("train_data", "out_dir")  # from a flag or the config file


def _load_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of field -> value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_parser() -> argparse.ArgumentParser:
    """The flags: ``--config``, then one per field of :class:`PretrainJob` and of
    :class:`~pretrain.train.TrainConfig` (help and defaults from the fields). No flag has an
    argparse default: a config file's value wins over a flag that was not given."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="JSON or YAML file with any of the fields below (flags given win over it)")
    p.add_argument("--train-data", dest="train_data",
                   help=f"{field_help(TrainConfig, 'train_data')} (required: flag or config file)")
    p.add_argument("--out", dest="out_dir", help="run directory, a local path or a URI (s3://...): checkpoints/, "
                                                 "metrics.jsonl, loss.png, tokenizer.json, result.json (required: "
                                                 "flag or config file)")
    add_config_flags(p, PretrainJob, no_defaults=True, choices={"tokenizer_kind": ("bpe", "unigram")})
    add_config_flags(p, TrainConfig, skip=("train_data", "tokenizer_json", "out_dir", "betas"),
                     choices={"precision": PRECISIONS, "balance": BALANCE_MODES}, no_defaults=True)
    p.add_argument("--betas", type=float, nargs=2, metavar=("BETA1", "BETA2"),
                   help=f"{field_help(TrainConfig, 'betas')} (default: {' '.join(map(str, field_default(TrainConfig, 'betas')))})")
    return p


def parse_args(argv: list[str] | None) -> dict:
    """Command line -> a flat dict of config fields (file values, then flags that were given)."""
    p = build_parser()
    args = vars(p.parse_args(argv))
    config = args.pop("config", None)
    merged = _load_config_file(config) if config else {}
    merged.update({k: v for k, v in args.items() if v is not None})
    for required in REQUIRED:
        if not merged.get(required):
            flag = "--out" if required == "out_dir" else "--" + required.replace("_", "-")
            p.error(f"{flag} is required (flag or config file)")
    return merged


def prepare_tokenizer(job: dict, model_name: str, out_dir: Path) -> str:
    """The tokenizer JSON: loaded from ``job['tokenizer']`` or trained on the shards'
    captions; saved as ``out_dir/tokenizer.json`` either way."""
    from pretrain.data import read_captions
    from pretrain.factory import get_model_config
    from pretrain.tokenizer import CaptionTokenizer

    text_cfg = get_model_config(model_name)["text_cfg"]
    context = text_cfg.get("context_length", 77)
    if job.get("tokenizer"):
        tokenizer = CaptionTokenizer.from_file(job["tokenizer"], context)
    else:
        captions = read_captions(job["train_data"], job.get("tokenizer_captions", 100_000))
        vocab = job.get("vocab_size") or text_cfg.get("vocab_size", 49408)
        tokenizer = CaptionTokenizer.train(captions, vocab_size=vocab, context_length=context,
                                           kind=job.get("tokenizer_kind", "bpe"))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(PretrainLayout(str(out_dir)).tokenizer)
    return tokenizer.to_str()


def absolute_shard_pattern(pattern: str) -> str:
    """Each part of a ``::``-joined shard spec as a brace pattern workers can open: a shard
    directory becomes the pattern of its shards (:func:`storage.layout.shard_pattern`), a local
    part is made absolute (Ray Train workers do not run in the submitter's working directory);
    URIs (``s3://``, ``pipe:``) are otherwise left alone."""
    parts = []
    for part in pattern.split("::"):
        if not part.startswith("pipe:") and not any(c in part for c in "{*?[") and is_dir(part):
            part = shard_pattern(part)
        local = "://" not in part and not part.startswith("pipe:") and not os.path.isabs(part)
        parts.append(os.path.join(os.getcwd(), part) if local else part)
    return "::".join(parts)


def check_inputs(flat: dict) -> dict:
    """Before Ray starts or a tokenizer is trained: exit with one line when ``--train-data``
    names no file (:func:`pipelines.cli.require_shards`), ``--balance online`` a source that is no
    online pool (:func:`pretrain.data.online_balance`) or ``--resume-from`` is not a readable
    checkpoint; a local ``--resume-from`` (a checkpoint file or directory, or a run directory) is
    resolved to its absolute checkpoint path, so every worker finds it."""
    require_shards("pretrain", "--train-data", flat["train_data"])
    if flat.get("balance") == "online":
        from pretrain.data import data_sources

        try:
            data_sources(flat["train_data"], flat.get("train_data_weights", ""), "online")
        except (OSError, ValueError) as err:
            raise SystemExit(f"pretrain: --balance online: {err}") from None
    resume = flat.get("resume_from")
    if resume and is_local(resume):
        try:
            flat = {**flat, "resume_from": str(resolve_checkpoint(resume).resolve())}
        except CheckpointError as err:
            raise SystemExit(f"pretrain: --resume-from: {err}") from None
    return flat


def build_job(flat: dict, staging: str | None = None) -> PretrainJob:
    """Flat config dict -> typed job (trains or loads the tokenizer). With ``staging`` (a local
    temp dir for a run whose ``--out`` is a URI) the run's files are written there first."""
    flat = dict(flat)
    out_dir = Path(staging or flat["out_dir"]).resolve()
    flat["out_dir"] = str(out_dir)
    flat["train_data"] = absolute_shard_pattern(flat["train_data"])
    job_fields = {k: flat.pop(k) for k in list(flat) if k in JOB_KEYS}
    flat["tokenizer_json"] = prepare_tokenizer({**job_fields, "train_data": flat["train_data"]},
                                               flat.get("model", "tiny"), out_dir)
    return PretrainJob(train=TrainConfig.from_dict(flat), **job_fields)


def fit(job: PretrainJob, storage: str | None = None, train_loop=train_loop_per_worker) -> dict:
    """Run ``train_loop`` (``TrainConfig`` dict -> metrics; the training loop unless a caller,
    e.g. a fault-injection test, wraps it); return {"metrics": last metrics, "checkpoint": path
    or None}. Ray Train writes its checkpoints to ``storage`` (a URI: straight to the object
    store) or to the run dir."""
    cfg = job.train
    if job.workers == 0:
        previous = step_checkpoints(cfg.out_dir)
        if not cfg.resume_from and previous:  # the same command again: go on, as Ray Train's runs do
            print(f"[pretrain] {cfg.out_dir}: resuming from its last checkpoint, {previous[-1]}")
            cfg = replace(cfg, resume_from=previous[-1])
        metrics = train_loop(asdict(cfg))
        ckpts = step_checkpoints(cfg.out_dir)
        return {"metrics": metrics, "checkpoint": ckpts[-1] if ckpts else None}
    init_ray(state_api=True)  # Ray Train's placement-group cleaner polls the state API (init_ray)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config=asdict(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=CHECKPOINTS,  # Ray's run dir: PretrainLayout.checkpoints_dir
            storage_path=storage or cfg.out_dir,
            failure_config=FailureConfig(max_failures=job.max_failures),
        ),
    )
    result = trainer.fit()
    checkpoint = None
    if result.checkpoint is not None:
        checkpoint = result.checkpoint.path
        if storage and not is_local(storage):  # Ray reports the path inside the bucket
            checkpoint = f"{storage.split('://', 1)[0]}://{checkpoint}"
    return {"metrics": result.metrics, "checkpoint": checkpoint}


def publish(staging: str, uri: str, summary: dict) -> dict:
    """Copy a staged run (tokenizer, metrics, plots, --workers 0 checkpoints) to ``uri`` with
    the checkpoint path rewritten to its place there; ``result.json`` is written last (each
    upload is one PUT: an object appears whole or not at all)."""
    layout = PretrainLayout(uri)
    for path in sorted(Path(staging).rglob("*")):
        if path.is_file():
            layout.fs.put_file(str(path), layout.path(layout.join(path.relative_to(staging).as_posix())))
    checkpoint, staged = summary.get("checkpoint") or "", str(Path(staging).resolve())
    if checkpoint.startswith(staged):  # build_job resolved the staging dir
        summary["checkpoint"] = layout.root + checkpoint[len(staged):]
    summary["config"]["out_dir"] = uri
    write_result(uri, summary)
    return summary


def pull_step_logs(uri: str, staging: str) -> None:
    """Copy a URI run's per-step logs (metrics.jsonl, sample-id logs) into its staging dir, so a
    resumed run continues them (cut back to its checkpoint) instead of replacing them."""
    remote, local = PretrainLayout(uri), PretrainLayout(staging)
    for log in remote.step_logs():
        target = Path(local.join(log[len(remote.root) + 1:]))
        target.parent.mkdir(parents=True, exist_ok=True)
        remote.fs.get_file(remote.path(log), str(target))


def finished(flat: dict) -> dict | None:
    """The run's ``result.json`` when ``--out`` holds a finished run of at least ``--steps`` steps
    and no ``--resume-from`` is given (the same command again: nothing to train)."""
    done = read_result(str(flat["out_dir"]))
    steps = flat.get("steps", field_default(TrainConfig, "steps"))
    if done and not flat.get("resume_from") and int(done.get("metrics", {}).get("step", 0)) >= int(steps):
        return done
    return None


def run(argv: list[str] | None = None, train_loop=train_loop_per_worker) -> dict:
    """Entry point: parse, prepare, train (``train_loop``: see :func:`fit`), write
    ``OUT/result.json``; return that dict. A finished run (:func:`finished`) is returned as is."""
    configure_environment()
    flat = check_inputs(parse_args(argv))
    out = str(flat["out_dir"])
    done = finished(flat)
    if done:
        print(f"[pretrain] {out}: finished already (step {done['metrics']['step']}, result.json); "
              "more --steps, or another --out, trains again")
        return done
    staging = None if is_local(out) else tempfile.mkdtemp(prefix="openwit-pretrain-")
    try:
        if staging:
            pull_step_logs(out, staging)
        job = build_job(flat, staging)
        outcome = fit(job, storage=out if staging else None, train_loop=train_loop)
        summary = {**outcome, "config": {k: v for k, v in asdict(job.train).items() if k != "tokenizer_json"},
                   "workers": job.workers}
        if staging:
            summary = publish(staging, out, summary)
        else:
            write_result(job.train.out_dir, summary)
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"[pretrain] done: step {outcome['metrics'].get('step')}, checkpoint {outcome['checkpoint']}")
    return summary


if __name__ == "__main__":
    run()
