"""CLIP training: one plain ``train_loop_per_worker(config)`` that runs alone (one process) or
under Ray Train's ``TorchTrainer`` (one copy per worker, DDP over gloo on CPU / nccl on GPU).

Read top to bottom: config -> worker environment -> model, tokenizer, optimizer -> resume ->
data -> the loop (LR, forward, ClipLoss, backward, clip, step, clamp logit_scale) -> logs and
checkpoints. A checkpoint is a directory (:mod:`pretrain.checkpoint` saves, loads and resolves
them); the run's files are named by :class:`storage.layout.PretrainLayout`.

Resume is exact: a checkpoint records every (rank, loader worker) slot's data-stream position
(:mod:`pretrain.stream`) and the data counts; a run resumed from it (``--resume-from``, Ray
Train's restart after a worker dies, or the same command run again) trains on exactly the
batches the uninterrupted run trains on, and rewrites ``metrics.jsonl`` (and the sample-id logs)
from the checkpoint's step on, so each step is there once.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.data import BALANCE_MODES, DataSources, data_sources, make_train_pipeline, train_batches
from pretrain.stream import initial_state
from pretrain.factory import create_model
from pretrain.loss import ClipLoss
from pretrain.model import CLIP
from pretrain.optim import param_groups
from pretrain.schedule import cosine_lr
from pretrain.tokenizer import CaptionTokenizer
from storage.layout import PretrainLayout

PRECISIONS = ("auto", "fp32", "bf16")  # the implemented --precision values
COUNT_KEYS = ("read", "decoded", "missing_image", "missing_text", "bad_text", "corrupt_image", "unreadable_shard",
              "not_sampled", "no_query_ids", "unknown_query_id")


@dataclass
class TrainConfig:
    train_data: str  # WebDataset shards: a shard directory or brace pattern, several joined by '::'
    tokenizer_json: str  # the caption tokenizer as a JSON string (CaptionTokenizer.to_str())
    out_dir: str  # run directory: metrics.jsonl, loss.png, local checkpoints (rank 0 writes)
    train_data_weights: str = ""  # mix the '::'-joined --train-data sources sample by sample with these weights, '::'-joined ('3::1'); '' = one pooled shard list
    balance: str = "offline"  # offline: train on the shards as they are | online: draw each data epoch's balanced sample of a 'build_wit.py --balance online' pool (MetaCLIP 2)
    model: str = "tiny"  # registered architecture name (pretrain/model_configs/*.json)
    steps: int = 100  # total optimizer steps
    steps_per_epoch: int = 0  # batches per epoch on every rank (0 = steps); checkpoint per epoch
    batch_size: int = 32  # pairs per worker per step (global batch = batch_size * workers)
    lr: float = 5e-4  # peak learning rate
    warmup_steps: int = 10  # linear warmup steps before the cosine decay
    weight_decay: float = 0.2  # AdamW decay on weight matrices only
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (CLIP paper)
    eps: float = 1e-6  # AdamW epsilon (CLIP paper)
    grad_clip_norm: float = 0.0  # clip the global grad norm to this (0 = off)
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 (PRECISIONS)
    grad_checkpointing: bool = False  # recompute transformer blocks in backward
    compile: bool = False  # torch.compile the model
    local_loss: bool = True  # ClipLoss: local rows vs all columns (with gathered grads)
    data_workers: int = 1  # loader processes per worker (0 = decode in the training process)
    resample: bool = True  # draw shards with replacement (else each data epoch reads every shard once)
    shuffle_buffer: int = 1000  # samples per shuffle block (each loader worker permutes blocks of this many)
    seed: int = 0  # model init and data order
    log_every: int = 10  # steps between metrics.jsonl lines
    log_sample_ids: bool = False  # write each step's sample ids per rank (samples/rank-NNNNN.jsonl)
    resume_from: str = ""  # checkpoint to start from: its directory or .pt file (pretrain.py: also a run dir) ('' = fresh, or Ray's checkpoint)
    use_gpu: bool = False  # train on CUDA (one GPU per worker)
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not implemented; use one of {', '.join(PRECISIONS)}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance {self.balance!r}: use one of {', '.join(BALANCE_MODES)}")
        if self.balance == "online" and self.resample:
            raise ValueError("--balance online draws a balanced sample per data epoch, which reads every shard once: "
                             "it needs --no-resample")
        if self.train_data_weights:
            from pretrain.data import parse_weights

            parse_weights(self.train_data, self.train_data_weights)  # one weight per source, or a clear error

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


@dataclass
class PretrainJob:
    """A pretraining job: the training config every worker runs and how the job runs it
    (``pipelines/pretrain.py``'s flags; the DAGs read its defaults)."""

    train: TrainConfig  # what every worker runs
    workers: int = 1  # Ray Train workers (0 = run the loop in this process, no Ray)
    max_failures: int = 2  # worker-group restarts from the last checkpoint before giving up
    tokenizer: str = ""  # existing tokenizer.json ('' = train one on the shards' captions)
    tokenizer_captions: int = 100_000  # captions read from the shards to train the BPE
    vocab_size: int = 0  # BPE vocabulary size (0 = the model's token embedding rows)
    tokenizer_kind: str = "bpe"  # tokenizer trained on the captions: bpe (English, lower-cased byte-level BPE) | unigram (worldwide: cased SentencePiece-style unigram)


@dataclass
class WorkerEnv:
    rank: int  # global rank of this worker
    world_size: int  # number of workers
    device: torch.device  # where the model lives
    in_ray: bool  # running inside a Ray Train worker (report/get_checkpoint available)


def worker_env(cfg: TrainConfig) -> WorkerEnv:
    """Rank, world size and device, from torch.distributed (initialised by Ray Train's torch
    backend) or single-process defaults."""
    in_ray = _in_ray_train()
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    if cfg.use_gpu:
        if in_ray:
            import ray.train.torch

            device = ray.train.torch.get_device()
        else:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return WorkerEnv(rank, world_size, device, in_ray)


def _in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (ImportError, RuntimeError):
        return False


def _resume_dir(cfg: TrainConfig, env: WorkerEnv):
    """(context manager giving a directory or None): Ray's latest checkpoint wins over
    ``resume_from`` (after a worker failure Ray hands back the last reported one)."""
    if env.in_ray:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            return checkpoint.as_directory()
    return contextlib.nullcontext(cfg.resume_from or None)


def build(cfg: TrainConfig, env: WorkerEnv):
    """Model (on its device), optimizer, tokenizer, the step to start at and the checkpoint's
    data state (None when fresh: :func:`data_start`)."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model)
    tokenizer = CaptionTokenizer.from_str(cfg.tokenizer_json, model.context_length)
    if tokenizer.vocab_size > model.token_embedding.num_embeddings:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids > model {cfg.model} vocab "
                         f"{model.token_embedding.num_embeddings}")
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    model.to(env.device)  # before the optimizer: its state is created / loaded on the same device
    # fused: one kernel per step over all parameters (3x faster than the per-tensor loop on CPU)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                  eps=cfg.eps, fused=True)
    start_step, data = 0, None
    with _resume_dir(cfg, env) as resume:
        if resume:
            state = load_checkpoint(resume)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])  # moves the state to the params' device
            start_step, data = int(state["step"]), state.get("data")
    return model, optimizer, tokenizer, start_step, data


DATA_KEYS = ("train_data", "train_data_weights", "balance", "resample", "shuffle_buffer", "seed")  # what fixes the order


def data_layout(cfg: TrainConfig, env: WorkerEnv, sources: DataSources) -> dict:
    """What a data-stream position is valid for: the settings that fix the order, the sources'
    files and online draws (:meth:`DataSources.identity`) and the slots."""
    return {**{k: getattr(cfg, k) for k in DATA_KEYS}, "sources": sources.identity(), "world_size": env.world_size,
            "workers": max(1, cfg.data_workers)}


def data_start(cfg: TrainConfig, env: WorkerEnv, data: dict | None, step: int,
               sources: DataSources) -> tuple[dict[int, dict], int, Counter]:
    """(start state per slot of this rank, the stream seed, the counts so far) for a run starting
    at ``step`` with a checkpoint's ``data``. A checkpoint of another layout (other ranks x loader
    workers, data files or settings) or without a data state cannot be resumed exactly: its
    stream starts afresh with the seed moved by the step (said once, on rank 0); the counts go on."""
    if step == 0:
        return {}, cfg.seed, Counter()
    counts = Counter((data or {}).get("counts", {})) if env.rank == 0 else Counter()  # summed over ranks when reported
    if data is None or data.get("layout") != data_layout(cfg, env, sources):
        if env.rank == 0:
            print(f"[pretrain] resuming at step {step} from a checkpoint whose data position does not fit this run "
                  f"({'none recorded' if data is None else 'other ranks x loader workers, data files or settings'}): "
                  f"the data stream restarts with seed {cfg.seed + step}, not exactly where it stopped")
        return {}, cfg.seed + step, counts
    workers = max(1, cfg.data_workers)
    slots = range(env.rank * workers, (env.rank + 1) * workers)
    return {slot: data["slots"][str(slot)] for slot in slots}, int(data["stream_seed"]), counts


class StepLog:
    """A jsonl file of per-step records, appended; a run starting at ``step`` first drops the
    records of later steps (left by the attempt it resumes), so each step is there once."""

    def __init__(self, layout: PretrainLayout, path: str, enabled: bool, step: int = 0):
        self.enabled, self.layout, self.path = enabled, layout, Path(path)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # rewritten atomically: a crash here leaves the old file
                kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
                layout.write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    """The step of a jsonl record; a line that does not parse (cut by a kill mid-append) is
    beyond every step, so :class:`StepLog` drops it."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog(StepLog):
    """Rank 0's metrics.jsonl (continued across resumes, each step once) and the loss plot."""

    def __init__(self, out_dir: str, enabled: bool, step: int = 0):
        layout = PretrainLayout(out_dir)
        super().__init__(layout, layout.metrics, enabled, step)

    def plot(self) -> None:
        """loss.png: training loss and logit scale against step."""
        if not self.enabled or not self.path.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot([r["step"] for r in rows], [r["loss"] for r in rows])
        ax1.set(xlabel="step", ylabel="contrastive loss", title="training loss")
        ax2.plot([r["step"] for r in rows], [r["logit_scale"] for r in rows])
        ax2.set(xlabel="step", ylabel="exp(logit_scale)", title="logit scale")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        self.layout.write_bytes(self.layout.loss_plot, buffer.getvalue())  # atomic


def _reduce_counts(counts: Counter, env: WorkerEnv, keys: tuple[str, ...] = COUNT_KEYS) -> dict[str, int]:
    """Sum the data counters over all ranks (a collective: every rank calls it at the same step)."""
    t = torch.tensor([counts[k] for k in keys], dtype=torch.float64)
    if env.world_size > 1:
        t = t.to(env.device)
        dist.all_reduce(t)
    return {k: int(v) for k, v in zip(keys, t.tolist())}


def data_state(cfg: TrainConfig, env: WorkerEnv, sources: DataSources, seed: int, positions: dict[int, dict],
               counts: dict[str, int]) -> dict:
    """The checkpoint's data state: the stream's seed, every rank's slot positions (gathered: a
    collective) and the counts summed over ranks."""
    gathered = [positions]
    if env.world_size > 1:
        gathered = [None] * env.world_size
        dist.all_gather_object(gathered, positions)
    slots = {str(slot): state for part in gathered for slot, state in part.items()}
    return {"layout": data_layout(cfg, env, sources), "stream_seed": seed, "slots": slots, "counts": counts}


def _report(cfg: TrainConfig, env: WorkerEnv, model: CLIP, optimizer, step: int, metrics: dict, data: dict) -> None:
    """Checkpoint at ``step``: under Ray every rank calls ``ray.train.report`` (rank 0 attaches
    the checkpoint); alone, rank 0 writes ``out_dir/checkpoints/step_<step>``."""
    if env.in_ray:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if env.rank == 0:
                checkpoint = ray.train.Checkpoint.from_directory(
                    save_checkpoint(Path(tmp) / "ckpt", model, optimizer, step, cfg, data)
                )
            ray.train.report(metrics, checkpoint=checkpoint)
    elif env.rank == 0:
        save_checkpoint(PretrainLayout(cfg.out_dir).checkpoint(step), model, optimizer, step, cfg, data)


def train_loop_per_worker(config: dict) -> dict:
    """Train CLIP per ``TrainConfig(**config)``; return the last step's metrics.

    Alone: one process, checkpoints under ``out_dir/checkpoints/``. Under TorchTrainer: DDP
    across workers, checkpoints through ``ray.train.report`` from rank 0, resumes from
    ``ray.train.get_checkpoint()`` after a failure. Every rank runs exactly ``steps`` steps on
    full batches of ``batch_size``."""
    # 1. config and worker environment
    cfg = TrainConfig.from_dict(config)
    env = worker_env(cfg)
    torch.set_float32_matmul_precision("high")
    # 2. model, optimizer, tokenizer, resume point
    model, optimizer, tokenizer, step, data = build(cfg, env)
    raw_model = model
    if env.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    loss_fn = ClipLoss(local_loss=cfg.local_loss and env.world_size > 1,
                       gather_with_grad=env.world_size > 1, rank=env.rank, world_size=env.world_size)
    # 3. data: an endless stream of equal-shape batches for this rank, from where the checkpoint left it
    sources = data_sources(cfg.train_data, cfg.train_data_weights, cfg.balance)
    start, seed, counts = data_start(cfg, env, data, step, sources)
    workers = max(1, cfg.data_workers)
    pipeline = make_train_pipeline(cfg.train_data, tokenizer, raw_model.visual.image_size, cfg.batch_size,
                                   seed=seed, resample=cfg.resample, shuffle_buffer=cfg.shuffle_buffer,
                                   rank=env.rank, world_size=env.world_size, workers=cfg.data_workers,
                                   rotation=step % workers, start=start, sources=sources)
    positions = {slot: start.get(slot) or initial_state(slot, len(sources.files))
                 for slot in range(env.rank * workers, (env.rank + 1) * workers)}
    count_keys = COUNT_KEYS + (tuple(f"source_{i}" for i in range(len(sources.files))) if sources.weights else ())
    batches = train_batches(pipeline, cfg.data_workers, pin_memory=env.device.type == "cuda")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")
    steps_per_epoch = cfg.steps_per_epoch or cfg.steps
    log = MetricsLog(cfg.out_dir, enabled=env.rank == 0, step=step)
    ids_log = StepLog(log.layout, log.layout.sample_ids(env.rank), cfg.log_sample_ids, step)
    data_epoch = 0
    progress = _progress(cfg, env, step)
    metrics: dict = {"step": step}
    t_last, samples_since = time.perf_counter(), 0
    # 4. the loop
    while step < cfg.steps:
        lr = cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        counts.update(batch.counts)
        positions[batch.slot], data_epoch = batch.state, batch.epoch
        ids_log.write({"step": step + 1, "ids": batch.ids})
        images = batch.images.to(env.device, non_blocking=True)  # (B, 3, S, S)
        texts = batch.texts.to(env.device, non_blocking=True)  # (B, context)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            image_features, text_features, logit_scale = model(images, texts)
            loss = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        raw_model.clamp_logit_scale()
        step += 1
        samples_since += cfg.batch_size * env.world_size
        if progress is not None:
            progress.update(1)
        # 5. metrics every log_every steps (same steps on every rank: the count reduce is collective);
        # only here is a value read back to the host, so other steps never wait on the device
        if step % cfg.log_every == 0 or step == cfg.steps or step % steps_per_epoch == 0:
            mean_loss = _mean_loss(loss, env)  # waits for the device: the timing below is honest
            now = time.perf_counter()
            metrics = {"step": step, "epoch": math.ceil(step / steps_per_epoch), "data_epoch": data_epoch, "loss": mean_loss,
                       "lr": lr, "logit_scale": float(raw_model.logit_scale.detach().exp()),
                       "samples_per_s": samples_since / (now - t_last), "data": _reduce_counts(counts, env, count_keys)}
            if cfg.train_data_weights:  # the achieved mix so far (decoded samples per source, all ranks)
                mixed = {k: v for k, v in metrics["data"].items() if k.startswith("source_")}
                metrics["mix"] = {k: round(v / max(1, sum(mixed.values())), 4) for k, v in mixed.items()}
            t_last, samples_since = now, 0
            log.write(metrics)
            if progress is not None:
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
        # 6. checkpoint at each epoch end and at the last step
        if step % steps_per_epoch == 0 or step == cfg.steps:
            state = data_state(cfg, env, sources, seed, positions, _reduce_counts(counts, env, count_keys))
            _report(cfg, env, raw_model, optimizer, step, metrics, state)
    if progress is not None:
        progress.close()
    log.plot()
    return metrics


def _mean_loss(loss: torch.Tensor, env: WorkerEnv) -> float:
    """The loss of the global batch: the mean of the per-rank (local-rows) losses."""
    value = loss.detach().float().clone()
    if env.world_size > 1:
        dist.all_reduce(value)
        value /= env.world_size
    return float(value)


def _progress(cfg: TrainConfig, env: WorkerEnv, start: int):
    if env.rank != 0 or not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", mininterval=2.0)
