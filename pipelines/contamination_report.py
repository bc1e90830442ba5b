"""Eval-overlap (contamination) report, CLIP §5: which eval images have near-duplicates in the
training shards, and does the model do better on them? (:mod:`contamination.analysis`)

    python pipelines/contamination_report.py --train-data 'runs/demo/curation/shards/{00000..00000}.tar' \\
        --checkpoint runs/demo/pretrain/tiny --dataset fashion-mnist --out runs/demo/reports/contamination \\
        [--detector learned|phash] [--detector-weights PATH] [--detector-epochs N]

Writes ``OUT/results.json``, ``details.json`` (every Overlap image: eval id, score, matched
training shard and key, zero-shot correct), ``report.md``, ``report.html`` + PNGs; embeddings are
cached per shard version in ``OUT/cache/`` and a detector trained here is kept as
``OUT/copy_detector.pt``. ``--train-data`` may be a shard directory, a brace pattern, a glob, or
several joined by ``::``; every path may be an fsspec URI (``s3://``…). ``--checkpoint`` is a
checkpoint file (``checkpoint.pt``, its ``tokenizer.json`` beside it), a checkpoint directory or
a pretrain run directory. Shards that name no file, or a checkpoint (CLIP or copy detector) that
cannot be read, end the run with one line naming them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json

from contamination.analysis import ReportConfig, report
from pipelines.cli import add_config_flags, config_from_args, require_shards
from pipelines.runtime import configure_environment
from storage.files import is_local


def build_parser() -> argparse.ArgumentParser:
    """The flags: one per :class:`~contamination.analysis.ReportConfig` field."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p, ReportConfig, flags={"datasets": "--dataset"}, choices={"detector": ("learned", "phash")})
    return p


def parse_args(argv: list[str] | None) -> ReportConfig:
    """Command line -> :class:`ReportConfig` (exits with one line if ``--train-data`` names no file)."""
    cfg = config_from_args(ReportConfig, build_parser().parse_args(argv))
    require_shards("contamination_report", "--train-data", cfg.train_data)
    return cfg


def run(argv: list[str] | None = None) -> dict:
    """Entry point: parse, run the report, print where it is."""
    configure_environment()
    cfg = parse_args(argv)
    from pretrain.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint

    try:
        if is_local(cfg.checkpoint):  # a bad checkpoint is named before the embedding, not after it
            load_checkpoint(resolve_checkpoint(cfg.checkpoint))
        results = report(cfg, log=lambda m: print(m, flush=True))
    except CheckpointError as err:
        raise SystemExit(f"contamination_report: {err}") from None
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run()
