"""Checkpoints (pretrain.checkpoint): the run's result.json written atomically, local or URI; a
run directory resolving to its last checkpoint, local and on an object store; the directory-level
atomic writer of storage.files under it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import (
    CHECKPOINT_FILE,
    TOKENIZER_FILE,
    load_checkpoint,
    load_model,
    read_result,
    resolve_checkpoint,
    save_checkpoint,
    step_checkpoints,
    write_result,
)
from pretrain.factory import create_model
from pretrain.train import TrainConfig
from storage.files import aside_path, atomic_write_dir, completed_dir, is_temp_name
from storage.layout import PretrainLayout


@pytest.fixture
def saved(tokenizer, tiny_shards, tmp_path):
    """A pretrain run dir with two step checkpoints (steps 2 and 10) and no result.json yet."""
    model = create_model("tiny")
    cfg = TrainConfig(train_data=tiny_shards, tokenizer_json=tokenizer.to_str(), out_dir=str(tmp_path / "run"))
    layout = PretrainLayout(cfg.out_dir)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (10, 2):
        save_checkpoint(layout.checkpoint(step), model, optimizer, step, cfg)
    return layout


def test_step_checkpoints_in_step_order_skipping_other_entries(saved):
    Path(saved.checkpoints_dir, "checkpoint_000001").mkdir()  # Ray Train's own, not ours
    Path(saved.checkpoints_dir, ".old-step_00000003").mkdir()
    assert step_checkpoints(saved.root) == [saved.checkpoint(2), saved.checkpoint(10)]
    assert step_checkpoints(str(Path(saved.root) / "missing")) == []


def test_run_dir_resolves_to_the_checkpoint_its_result_names(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither a checkpoint \(its .pt file or directory\) nor a pretrain run"):
        resolve_checkpoint(saved.root)  # no result.json: not finished
    assert read_result(saved.root) is None
    written = write_result(saved.root, {"checkpoint": saved.checkpoint(10), "metrics": {"step": 10}})
    assert written == saved.result and read_result(saved.root)["metrics"] == {"step": 10}
    assert [p.name for p in Path(saved.root).iterdir() if is_temp_name(p.name)] == []
    assert resolve_checkpoint(saved.root) == Path(saved.checkpoint(10))
    assert resolve_checkpoint(saved.checkpoint(2)) == Path(saved.checkpoint(2))
    model, tokenizer, state = load_model(resolve_checkpoint(saved.root))
    assert state["step"] == 10 and tokenizer.vocab_size > 0
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_remote_run_dir_is_fetched_through_its_result(saved):
    """A run published to an object store (memory:// stands for s3://): result.json names the
    checkpoint by URI; resolving the run dir copies that checkpoint locally."""
    import fsspec

    uri = f"memory://openwit-{uuid.uuid4().hex}/run"
    fs = fsspec.filesystem("memory")
    local = Path(saved.checkpoint(10))
    remote_ckpt = PretrainLayout(uri).checkpoint(10)
    for file in (CHECKPOINT_FILE, TOKENIZER_FILE):
        fs.put_file(str(local / file), f"{remote_ckpt}/{file}")
    write_result(uri, {"checkpoint": remote_ckpt})
    assert json.loads(fs.cat_file(PretrainLayout(uri).result))["checkpoint"] == remote_ckpt
    fetched = resolve_checkpoint(uri)
    assert fetched.is_dir() and load_checkpoint(fetched)["step"] == 10
    assert load_checkpoint(resolve_checkpoint(remote_ckpt))["step"] == 10
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_checkpoint(f"memory://openwit-{uuid.uuid4().hex}/empty")


def test_atomic_write_dir_keeps_the_old_directory_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "d"

    def files(text):
        def write(folder: Path):
            (folder / "a.txt").write_text(text)
            (folder / "sub").mkdir()
            (folder / "sub" / "b.txt").write_text(text)
        return write

    assert atomic_write_dir(target, files("one")) == target
    assert (target / "sub" / "b.txt").read_text() == "one"

    def failing(folder: Path):
        (folder / "a.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(target, failing)
    assert (target / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # the state a crash between the two renames leaves: only the aside copy
    target.rename(aside_path(target))
    assert completed_dir(target) == aside_path(target)
    atomic_write_dir(target, files("two"))
    assert completed_dir(target) == target and (target / "a.txt").read_text() == "two"
    assert not aside_path(target).exists()
    with pytest.raises(ValueError, match="local"):
        atomic_write_dir("memory://x/d", files("three"))


def test_job_without_ray_publishes_to_a_uri(tiny_shards, tokenizer, tmp_path):
    """``pretrain.py --workers 0 --out URI``: the run is staged locally, copied to the URI with the
    checkpoint path rewritten there, result.json last; the URI then resolves to that checkpoint."""
    from pipelines import pretrain as pretrain_job

    given = tmp_path / "tokenizer.json"
    tokenizer.save(given)
    uri = f"memory://openwit-{uuid.uuid4().hex}/run"
    summary = pretrain_job.run(["--train-data", tiny_shards, "--out", uri, "--workers", "0", "--steps", "2",
                                "--batch-size", "8", "--log-every", "1", "--warmup-steps", "1",
                                "--data-workers", "0", "--no-progress", "--tokenizer", str(given)])
    layout = PretrainLayout(uri)
    assert summary["checkpoint"] == layout.checkpoint(2) and summary["config"]["out_dir"] == uri
    assert read_result(uri) == json.loads(json.dumps(summary, default=str))
    assert layout.exists(layout.metrics) and layout.exists(layout.tokenizer)
    assert load_checkpoint(resolve_checkpoint(uri))["step"] == 2
