"""Exact mid-epoch resume: a stream started from any batch's recorded positions goes on exactly
as the uninterrupted stream (same sample ids, same pixels, same counts); a training run whose
process is SIGKILLed mid-epoch and run again logs, step by step, the sample ids and losses of the
uninterrupted run, and metrics.jsonl has every step once — in one process (``--workers 0``) and
under Ray Train on a running head."""

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


def test_bad_shards_are_counted_once_across_a_resume(bad_shards, tokenizer):
    """Unreadable shards and bad samples: a resumed stream counts exactly what the uninterrupted
    one counts after the same batch (what it re-reads to get back into place is not counted again)."""
    options = {"resample": False, "shuffle_buffer": 5}
    pipeline = make_train_pipeline(bad_shards, tokenizer, 32, 4, **options)
    reference = list(itertools.islice(train_batches(pipeline, 0), 12))
    for cut in (2, 5, 9):
        pipeline = make_train_pipeline(bad_shards, tokenizer, 32, 4, start={0: reference[cut - 1].state}, **options)
        resumed = list(itertools.islice(train_batches(pipeline, 0), 12 - cut))
        assert [b.ids for b in resumed] == [b.ids for b in reference[cut:]]
        assert [b.counts for b in resumed] == [b.counts for b in reference[cut:]], cut
    assert sum(b.counts.get("unreadable_shard", 0) for b in reference) >= 3


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


def _pretrain(argv: list[str], out: Path, env: dict | None = None) -> subprocess.Popen:
    """``pipelines/pretrain.py ARGV --out OUT`` as a process of its own, its output in OUT.log."""
    log = (out.parent / f"{out.name}.log").open("ab")
    return subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "pretrain.py"), *argv, "--out", str(out)],
                            env=env or dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)


def _lines(path: Path, partial: bool = False) -> list[dict]:
    """The records of a jsonl log; ``partial``: while it is being written (a last line cut
    mid-append is left out)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if partial and lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            lines = lines[:-1]
    return [json.loads(line) for line in lines]


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
    while not any(m["step"] >= 8 for m in _lines(run / "metrics.jsonl", partial=True)):  # past the step-6 checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, (run.parent / "run.log").read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _lines(run / "metrics.jsonl", partial=True)
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
    # the same command once more: finished, nothing trained, result.json untouched
    result = (run / "result.json").read_bytes()
    assert _pretrain(argv, run).wait(timeout=300) == 0
    assert "finished already" in (run.parent / "run.log").read_text() and (run / "result.json").read_bytes() == result


@pytest.mark.ray
@pytest.mark.slow
def test_killed_ray_driver_resumes_exactly_when_run_again(ray_head, tiny_shards, tokenizer, tmp_path):
    """Under Ray Train on a running head (2 training workers): SIGKILL the job's driver once
    Ray Train has committed a checkpoint (one every 4 steps) and rank 0 has trained past the
    first, then run the same command again: Ray Train finds its run in OUT/checkpoints and the run
    goes on exactly. 60 steps, so that the kill lands mid-run however late the commit is seen."""
    from tests.pretrain.test_pretrain_train import _logged_ids, _reference_ids

    tok = tmp_path / "tokenizer.json"
    tok.write_text(tokenizer.to_str())
    argv = ["--train-data", tiny_shards, "--tokenizer", str(tok), "--model", "tiny", "--steps", "60",
            "--steps-per-epoch", "4", "--batch-size", "16", "--log-every", "1", "--warmup-steps", "1",
            "--workers", "2", "--data-workers", "0", "--log-sample-ids", "--no-progress", "--max-failures", "0"]
    env = {"RAY_ADDRESS": ray_head.gcs, "RAY_API_SERVER_ADDRESS": str(ray_head)}
    run = tmp_path / "run"
    proc = _pretrain(argv, run, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300

    def committed() -> bool:
        try:
            return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
        except (OSError, ValueError):  # not written yet, or caught mid-write
            return False

    while not (committed() and any(m["step"] >= 5 for m in _lines(run / "metrics.jsonl", partial=True))):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _lines(run / "metrics.jsonl", partial=True)
    print(f"driver killed at step {max(m['step'] for m in before)} of 60")
    assert not (run / "result.json").exists() and max(m["step"] for m in before) < 60, \
        "the run ended before the kill: nothing was tested"
    again = _pretrain(argv, run, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert again.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    metrics = _lines(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 61))
    assert metrics[:4] == before[:4]  # steps 1-4 not run again (timings kept)
    assert metrics[-1]["data"]["decoded"] == 60 * 2 * 16  # counts go on across the kill
    for rank in (0, 1):
        assert _logged_ids(run, rank) == _reference_ids(tiny_shards, rank, steps=60)
