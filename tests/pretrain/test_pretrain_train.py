"""The training loop: alone (checkpoint round trip, resume continuing the step count,
metrics), and under Ray Train's TorchTrainer with 2 gloo workers (the job entry point), and
recovery of a killed worker through FailureConfig."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from pipelines import pretrain as pretrain_job
from pretrain.checkpoint import load_checkpoint, load_model
from pretrain.train import TrainConfig, train_loop_per_worker


def _config(shards, tokenizer, out, **overrides) -> dict:
    cfg = TrainConfig(train_data=shards, tokenizer_json=tokenizer.to_str(), out_dir=str(out),
                      model="tiny", batch_size=16, warmup_steps=2, log_every=1, data_workers=0,
                      shuffle_buffer=50, progress=False)
    return {**asdict(cfg), **overrides}


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_alone_checkpoints_round_trip_and_resume_continues(tiny_shards, tokenizer, tmp_path):
    first = train_loop_per_worker(_config(tiny_shards, tokenizer, tmp_path, steps=4, steps_per_epoch=2))
    assert first["step"] == 4
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_00000002", "step_00000004"]
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 4 and state["scheduler"]["total_steps"] == 4
    assert len(state["optimizer"]["state"]) > 0
    # round trip: the loaded model equals the saved weights, tokenizer included
    model, tok, _ = load_model(ckpts[-1])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state["model"][name])
    assert tok.to_str() == tokenizer.to_str()
    # resume from the path: continues at step 5, up to the new total
    resumed = train_loop_per_worker(_config(tiny_shards, tokenizer, tmp_path, steps=6,
                                            resume_from=str(ckpts[-1])))
    assert resumed["step"] == 6
    steps = [m["step"] for m in _metrics(tmp_path)]
    assert steps == [1, 2, 3, 4, 5, 6]
    rows = _metrics(tmp_path)
    # the counts go on across the resume (restored from the checkpoint); reads run ahead of the
    # decoded samples by what waits in the shuffle block
    assert [m["data"]["decoded"] for m in rows] == [16 * m["step"] for m in rows]
    assert all(m["data"]["decoded"] <= m["data"]["read"] <= m["data"]["decoded"] + 50 for m in rows)
    assert all(set(m) >= {"loss", "lr", "logit_scale", "samples_per_s"} for m in rows)
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_unknown_config_key_is_named(tiny_shards, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        train_loop_per_worker({**_config(tiny_shards, tokenizer, tmp_path), "learning_rate": 1.0})


@pytest.mark.ray
def test_job_two_workers_on_torchtrainer(ray_session, tiny_shards, tmp_path):
    out = tmp_path / "run"
    summary = pretrain_job.run([
        "--train-data", tiny_shards, "--model", "tiny", "--steps", "4", "--batch-size", "16",
        "--workers", "2", "--out", str(out), "--log-every", "2", "--warmup-steps", "1",
        "--vocab-size", "400", "--data-workers", "0", "--no-progress",
    ])
    assert summary["metrics"]["step"] == 4 and summary["workers"] == 2
    ckpt = Path(summary["checkpoint"])
    assert ckpt.parent == out / "checkpoints" and load_checkpoint(ckpt)["step"] == 4
    assert (out / "tokenizer.json").is_file() and (out / "result.json").is_file()
    rows = _metrics(out)
    assert [m["step"] for m in rows] == [2, 4]
    # cumulative data counters, summed over both ranks: 2 workers x 16 pairs per step
    assert [m["data"]["decoded"] for m in rows] == [64, 128]
    # the run directory stands for its last checkpoint in evaluate.py
    from pretrain.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(str(out)) == ckpt


def _crash_rank1_once_checkpoint_committed():
    """A training loop for ``pretrain_job.run(train_loop=...)``, defined in a closure so that
    cloudpickle ships it by value (this test module is not importable in Ray workers)."""

    def loop(config: dict):
        """The training loop, except that on the first attempt rank 1 is SIGKILLed as soon as
        Ray Train has committed the first checkpoint; the restarted group resumes from it.

        "Committed" is observed, not waited for: Ray Train's controller registers a reported
        checkpoint (all ranks polled) and then writes its checkpoint manager's snapshot in the run's
        storage dir; rank 1 polls that file until it names a checkpoint (60 s limit)."""
        import json
        import os
        import signal
        import time
        from pathlib import Path

        import ray.train

        import pretrain.checkpoint as checkpoints
        import pretrain.train as train

        rank = ray.train.get_context().get_world_rank()
        out = Path(config["out_dir"])
        crashed = out / "crashed"
        if not crashed.exists():
            report = train._report

            def report_then_die(*args, **kwargs):
                report(*args, **kwargs)
                if rank != 1:
                    return
                snapshot = out / "checkpoints" / "checkpoint_manager_snapshot.json"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                            break
                    except (OSError, ValueError):  # not written yet, or caught mid-write
                        pass
                    time.sleep(0.05)
                else:
                    raise TimeoutError(f"{snapshot}: no committed checkpoint after 60 s")
                crashed.touch()
                os.kill(os.getpid(), signal.SIGKILL)

            train._report = report_then_die
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                step = checkpoints.load_checkpoint(d)["step"]
            (out / f"resumed-rank{rank}-step{step}").touch()
        return train.train_loop_per_worker(config)

    return loop


def _job_argv(shards, out, max_failures: int) -> list[str]:
    return ["--train-data", shards, "--model", "tiny", "--steps", "4", "--steps-per-epoch", "2",
            "--batch-size", "16", "--workers", "2", "--out", str(out), "--log-every", "1",
            "--warmup-steps", "1", "--vocab-size", "400", "--data-workers", "0", "--no-progress",
            "--max-failures", str(max_failures), "--log-sample-ids"]


def _reference_ids(shards, rank: int, steps: int = 4) -> list[list[str]]:
    """The sample ids of rank ``rank``'s first ``steps`` batches in a 2-worker run of
    :func:`_job_argv` (seed 0, resampled, default shuffle block, no loader workers): the
    uninterrupted run's, a pure function of those settings."""
    from pretrain.data import make_train_pipeline
    from pretrain.tokenizer import CaptionTokenizer

    tokenizer = CaptionTokenizer.train(["a caption"], vocab_size=300)
    pipeline = make_train_pipeline(shards, tokenizer, 32, 16, rank=rank, world_size=2)
    return [batch.ids for _, batch in zip(range(steps), pipeline)]


def _logged_ids(out: Path, rank: int) -> list[list[str]]:
    rows = [json.loads(line) for line in (out / "samples" / f"rank-{rank:05d}.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # each step once, in order
    return [r["ids"] for r in rows]


@pytest.mark.ray
def test_killed_worker_restarts_from_checkpoint_per_max_failures(ray_session, tiny_shards, tmp_path):
    # through the job entry point: --max-failures 1 -> FailureConfig(max_failures=1): one restart
    out = tmp_path / "run"
    summary = pretrain_job.run(_job_argv(tiny_shards, out, 1), train_loop=_crash_rank1_once_checkpoint_committed())
    assert summary["metrics"]["step"] == 4
    assert (out / "crashed").exists()
    assert (out / "resumed-rank0-step2").exists() and (out / "resumed-rank1-step2").exists()
    assert load_checkpoint(summary["checkpoint"])["step"] == 4
    # exact resume: each step once in metrics.jsonl, and every rank trained on the samples of the
    # uninterrupted run, step by step (the steps rank 0 ran past the checkpoint were run again)
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]
    for rank in (0, 1):
        assert _logged_ids(out, rank) == _reference_ids(tiny_shards, rank)
    # --max-failures 0: the same death ends the job ...
    out0 = tmp_path / "run0"
    with pytest.raises(Exception, match="(?i)fail|died|error"):
        pretrain_job.run(_job_argv(tiny_shards, out0, 0), train_loop=_crash_rank1_once_checkpoint_committed())
    assert (out0 / "crashed").exists() and not list(out0.glob("resumed-*"))
    assert not (out0 / "result.json").exists()
    before = _metrics(out0)
    assert [m["step"] for m in before][:2] == [1, 2]
    # ... and the same command run again (a new driver) resumes from Ray Train's last checkpoint, exactly
    summary = pretrain_job.run(_job_argv(tiny_shards, out0, 0))
    assert summary["metrics"]["step"] == 4 and [m["step"] for m in _metrics(out0)] == [1, 2, 3, 4]
    assert _metrics(out0)[:2] == before[:2]  # steps 1-2 not run again (their timings kept, not re-measured)
    assert load_checkpoint(summary["checkpoint"])["data"]["counts"]["decoded"] == 4 * 2 * 16
    for rank in (0, 1):
        assert _logged_ids(out0, rank) == _reference_ids(tiny_shards, rank)


def test_job_config_file_then_flags(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("train-data: 'shards/{00000..00009}.tar'\nmodel: ViT-S-32\nsteps: 100\n"
                      "batch_size: 8\nworkers: 4\ngrad_checkpointing: true\nbetas: [0.9, 0.95]\n")
    flat = pretrain_job.parse_args(["--config", str(config), "--steps", "7", "--out", "runs/x"])
    assert flat["train_data"] == "shards/{00000..00009}.tar" and flat["model"] == "ViT-S-32"
    assert flat["steps"] == 7 and flat["batch_size"] == 8 and flat["workers"] == 4
    assert flat["grad_checkpointing"] is True and flat["out_dir"] == "runs/x"
    cfg = TrainConfig.from_dict({k: v for k, v in flat.items() if k not in pretrain_job.JOB_KEYS}
                                | {"tokenizer_json": "{}"})
    assert cfg.betas == (0.9, 0.95)
    with pytest.raises(SystemExit):
        pretrain_job.parse_args(["--steps", "3"])  # no --train-data / --out


def test_precision_accepts_only_implemented_values(tiny_shards, tokenizer, tmp_path):
    # fp16 used to be accepted and silently train in fp32
    with pytest.raises(ValueError, match="fp16.*auto, fp32, bf16"):
        TrainConfig.from_dict(_config(tiny_shards, tokenizer, tmp_path, precision="fp16"))
    with pytest.raises(SystemExit):
        pretrain_job.parse_args(["--train-data", "x.tar", "--out", "o", "--precision", "fp16"])
    config = tmp_path / "pretrain.yaml"
    config.write_text("precision: fp16\n")  # a config file bypasses argparse's choices
    flat = pretrain_job.parse_args(["--config", str(config), "--train-data", tiny_shards, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="fp16"):
        pretrain_job.build_job({**flat, "tokenizer": str(_saved_tokenizer(tokenizer, tmp_path))})
    assert TrainConfig.from_dict(_config(tiny_shards, tokenizer, tmp_path, precision="bf16")).precision == "bf16"


def _saved_tokenizer(tokenizer, folder) -> Path:
    path = Path(folder) / "given-tokenizer.json"
    tokenizer.save(path)
    return path


def test_checkpoint_save_is_atomic(tiny_shards, tokenizer, tmp_path, monkeypatch):
    from pretrain.checkpoint import save_checkpoint
    from pretrain.factory import create_model
    from storage import files

    cfg = TrainConfig.from_dict(_config(tiny_shards, tokenizer, tmp_path))
    model = create_model("tiny")
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "step_00000002"
    save_checkpoint(path, model, optimizer, 2, cfg)
    # 1. a crash while writing the new files leaves the old checkpoint in place, no temp dir
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, optimizer, 3, cfg)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # 2. a crash between moving the old one aside and moving the new one in: the old one is read
    real_rename, calls = files.os.rename, []

    def rename_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, optimizer, 3, cfg)
    monkeypatch.setattr(files.os, "rename", real_rename)
    assert not path.exists()
    assert load_checkpoint(path)["step"] == 2
    assert load_model(path)[2]["step"] == 2
    # 3. the next save completes and removes the .old- copy
    save_checkpoint(path, model, optimizer, 4, cfg)
    assert load_checkpoint(path)["step"] == 4
    assert not (tmp_path / ".old-step_00000002").exists()
