"""Exact mid-epoch resume: a stream started from any batch's recorded positions goes on exactly
as the uninterrupted stream (same sample ids, same pixels, same counts); a training run whose
process is SIGKILLed mid-epoch and run again logs, step by step, the sample ids and losses of the
uninterrupted run, and metrics.jsonl has every step once."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.data import make_train_pipeline, train_batches

ROOT = Path(__file__).resolve().parents[2]


def _batches(pattern, tokenizer, workers, count, **kw):
    pipeline = make_train_pipeline(pattern, tokenizer, 32, 16, seed=4, shuffle_buffer=50, workers=workers, **kw)
    return list(itertools.islice(train_batches(pipeline, workers), count))


@pytest.mark.parametrize("workers,options", [
    (0, {"resample": False}),
    (2, {"resample": False}),
    (2, {"resample": True}),
    (2, {"weights": "3::1"}),
])
def test_stream_resumes_exactly_from_any_batch(tiny_shards, tokenizer, workers, options):
    pattern = f"{tiny_shards}::{tiny_shards.replace('{00000..00003}', '{00002..00003}')}" if "weights" in options \
        else tiny_shards
    reference = _batches(pattern, tokenizer, workers, 36, **options)
    # 36 batches of 16 from 512 samples: the run crosses a data epoch
    for cut in (1, 17, 33):
        start = {}
        for batch in reference[:cut]:
            start[batch.slot] = batch.state
        resumed = _batches(pattern, tokenizer, workers, 36 - cut, rotation=cut % max(1, workers), start=start, **options)
        assert [b.ids for b in resumed] == [b.ids for b in reference[cut:]], cut
        assert [b.slot for b in resumed] == [b.slot for b in reference[cut:]]
        assert all(torch.equal(a.images, b.images) and torch.equal(a.texts, b.texts)
                   for a, b in zip(resumed, reference[cut:]))  # the crops too
        assert [b.counts for b in resumed] == [b.counts for b in reference[cut:]]  # replayed reads not counted again
    ids = [i for b in reference for i in b.ids]
    if workers == 0 and not options.get("resample"):  # a data epoch reads each shard once: no sample
        # twice before the epoch's last block (50) and every sample by the end of the next one
        assert len(set(ids[:462])) == 462 and len(set(ids[:562])) == 512 and reference[-1].epoch == 1


def _pretrain(argv: list[str], out: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = (out.parent / f"{out.name}.log").open("ab")
    return subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "pretrain.py"), *argv, "--out", str(out)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, **popen)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_killed_run_resumes_exactly_when_run_again(tiny_shards, tokenizer, tmp_path):
    """``--workers 0`` (the loop in the job's process, 2 loader workers): SIGKILL the process after
    its step-6 checkpoint, mid data epoch, then run the same command again."""
    tok = tmp_path / "tokenizer.json"
    tok.write_text(tokenizer.to_str())
    argv = ["--train-data", tiny_shards, "--tokenizer", str(tok), "--model", "tiny", "--steps", "40",
            "--steps-per-epoch", "6", "--batch-size", "16", "--log-every", "1", "--warmup-steps", "2",
            "--shuffle-buffer", "50", "--no-resample", "--data-workers", "2", "--workers", "0", "--log-sample-ids",
            "--no-progress"]
    reference = tmp_path / "reference"
    assert _pretrain(argv, reference).wait(timeout=300) == 0
    run = tmp_path / "run"
    proc = _pretrain(argv, run)
    deadline = time.monotonic() + 240
    while not any(m["step"] >= 8 for m in _lines(run / "metrics.jsonl")):  # past the step-6 checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, (run.parent / "run.log").read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _lines(run / "metrics.jsonl")
    killed_at = max(m["step"] for m in before)
    assert 8 <= killed_at < 40 and (run / "checkpoints" / "step_00000006").is_dir()
    assert not (run / "result.json").exists()
    assert _pretrain(argv, run).wait(timeout=300) == 0
    assert "resuming from its last checkpoint" in (run.parent / "run.log").read_text()
    assert _lines(run / "metrics.jsonl")[:6] == before[:6]  # steps 1-6 not run again (timings kept)
    ids, ref_ids = _lines(run / "samples" / "rank-00000.jsonl"), _lines(reference / "samples" / "rank-00000.jsonl")
    assert [r["step"] for r in ids] == list(range(1, 41))
    assert ids == ref_ids  # step by step, the same samples
    metrics, ref = _lines(run / "metrics.jsonl"), _lines(reference / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert [m["data"] for m in metrics] == [m["data"] for m in ref]  # counts go on across the kill
    assert [m["loss"] for m in metrics] == pytest.approx([m["loss"] for m in ref], rel=1e-5)
