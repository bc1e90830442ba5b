"""The training loop: alone (checkpoint round trip, resume continuing the step count,
metrics), and under Ray Train's TorchTrainer with 2 gloo workers (the job entry point), and
recovery of a killed worker through FailureConfig."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from pipelines import pretrain as pretrain_job
from pretrain.train import TrainConfig, load_checkpoint, load_model, train_loop_per_worker


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
    assert all(m["data"]["read"] == m["data"]["decoded"] for m in rows)
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
    from pipelines.evaluate import resolve_checkpoint

    assert resolve_checkpoint(str(out)) == ckpt


@pytest.mark.ray
def test_killed_worker_restarts_from_checkpoint(ray_session, tiny_shards, tokenizer, tmp_path):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # defined here so cloudpickle ships it by value (the test module is not importable in workers)
    def _crash_rank1_after_first_checkpoint(config: dict):
        """Rank 1 dies (os._exit) a few seconds after the first checkpoint is reported, on the first
        attempt only; the restarted group resumes from that checkpoint."""
        import ray.train

        import pretrain.train as train

        rank = ray.train.get_context().get_world_rank()
        crashed = Path(config["out_dir"], "crashed")
        if not crashed.exists():
            report = train._report

            def report_then_die(*args, **kwargs):
                report(*args, **kwargs)
                if rank == 1:
                    # die during the next step; a report only commits once Ray Train's
                    # controller has polled every rank (every 2 s), so give it that time
                    time.sleep(4)
                    crashed.touch()
                    os._exit(1)

            train._report = report_then_die
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                step = train.load_checkpoint(d)["step"]
            Path(config["out_dir"], f"resumed-rank{rank}-step{step}").touch()
        return train.train_loop_per_worker(config)

    trainer = TorchTrainer(
        _crash_rank1_after_first_checkpoint,
        train_loop_config=_config(tiny_shards, tokenizer, tmp_path, steps=4, steps_per_epoch=2),
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="checkpoints", storage_path=str(tmp_path),
                             failure_config=FailureConfig(max_failures=1)),
    )
    result = trainer.fit()
    assert result.metrics["step"] == 4
    assert (tmp_path / "crashed").exists()
    assert (tmp_path / "resumed-rank0-step2").exists() and (tmp_path / "resumed-rank1-step2").exists()
    assert load_checkpoint(result.checkpoint.path)["step"] == 4
    steps = [m["step"] for m in _metrics(tmp_path)]
    assert steps[:2] == [1, 2] and steps[-2:] == [3, 4] and len(steps) == 4


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
