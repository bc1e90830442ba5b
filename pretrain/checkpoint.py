"""Checkpoints of a pretraining run: save, load and resolve them (local or URI), and the run's
``result.json``.

A checkpoint is a directory: ``checkpoint.pt`` (model, optimizer, scheduler, step, configs) +
``tokenizer.json``, replaced atomically (:func:`storage.files.atomic_write_dir`: a crash leaves
the new or the previous one) and read with ``torch.load(weights_only=True)``. A pretrain run
directory (:class:`storage.layout.PretrainLayout`) stands for its last checkpoint: its
``result.json``, written last and atomically by :func:`write_result`, names it.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pretrain.factory import create_model
from pretrain.model import CLIP, CLIPConfig
from pretrain.tokenizer import CaptionTokenizer
from storage.files import atomic_write_dir, completed_dir, is_local
from storage.layout import PretrainLayout

if TYPE_CHECKING:
    from pretrain.train import TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"  # model, optimizer, scheduler, step, configs (in a checkpoint dir)
TOKENIZER_FILE = "tokenizer.json"  # the caption tokenizer (in a checkpoint dir)


def save_checkpoint(path: str | Path, model: CLIP, optimizer, step: int, cfg: TrainConfig) -> Path:
    """Write the checkpoint directory ``path`` (local) and return it. Atomic: the files are
    written and fsynced in a temp dir beside ``path`` and renamed into place; the checkpoint it
    replaces is kept aside (``.old-<name>``) until then, which :func:`load_checkpoint` falls back
    to (:func:`storage.files.atomic_write_dir`)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"name": "cosine", "base_lr": cfg.lr, "warmup_steps": cfg.warmup_steps,
                      "total_steps": cfg.steps, "step": step},
        "step": step,
        "model_config": asdict(model.cfg),
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "tokenizer_json"},
    }

    def write(folder: Path) -> None:
        torch.save(state, folder / CHECKPOINT_FILE)
        (folder / TOKENIZER_FILE).write_text(cfg.tokenizer_json)

    return atomic_write_dir(path, write)


def load_checkpoint(path: str | Path) -> dict:
    """Read ``checkpoint.pt`` of a checkpoint directory (weights_only: no pickled code runs).
    If ``path`` is missing because a save was interrupted between its two renames, the
    checkpoint it was replacing (``.old-<name>``) is read."""
    file = completed_dir(path) / CHECKPOINT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{Path(path) / CHECKPOINT_FILE}: no checkpoint file in checkpoint directory {path}")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_model(path: str | Path) -> tuple[CLIP, CaptionTokenizer, dict]:
    """Model (eval mode, CPU) + tokenizer + raw state from a (local) checkpoint directory."""
    state = load_checkpoint(path)
    model = create_model(CLIPConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    tokenizer = CaptionTokenizer.from_file(completed_dir(path) / TOKENIZER_FILE, model.context_length)
    return model.eval(), tokenizer, state


def step_checkpoints(run_dir: str) -> list[str]:
    """The checkpoint directories a run trained without Ray wrote
    (:meth:`PretrainLayout.checkpoint`), in step order; none: an empty list."""
    layout = PretrainLayout(run_dir)
    fs, base = layout.fs, layout.path(layout.checkpoints_dir)
    if not fs.isdir(base):
        return []
    steps = []
    for entry in fs.ls(base, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        digits = name.rpartition("_")[2]
        if digits.isdigit() and posixpath.basename(layout.checkpoint(int(digits))) == name:
            steps.append(int(digits))
    return [layout.checkpoint(step) for step in sorted(steps)]


def write_result(run_dir: str, summary: dict) -> str:
    """Write the run's ``result.json`` (last metrics, the final checkpoint, the config)
    atomically, local or URI: the run's completion marker, written last. Returns its path."""
    layout = PretrainLayout(run_dir)
    layout.write_json(layout.result, summary)
    return layout.result


def read_result(run_dir: str) -> dict | None:
    """The run's ``result.json``, or None when there is none (not a run dir, or not finished)."""
    layout = PretrainLayout(run_dir)
    return layout.read_json(layout.result) if layout.exists(layout.result) else None


def resolve_checkpoint(path: str) -> Path:
    """A local checkpoint directory for ``path``: a checkpoint directory, or a pretrain run
    directory (its ``result.json`` names the last checkpoint), local or on an object store (then
    copied locally: :func:`fetch_remote_checkpoint`); ``FileNotFoundError`` naming the path
    otherwise."""
    if not is_local(path):
        return fetch_remote_checkpoint(path)
    p = Path(path.removeprefix("file://"))
    if (completed_dir(p) / CHECKPOINT_FILE).is_file():
        return p
    checkpoint = (read_result(str(p)) or {}).get("checkpoint") if p.is_dir() else None
    if checkpoint and (completed_dir(checkpoint) / CHECKPOINT_FILE).is_file():
        return Path(checkpoint)
    raise FileNotFoundError(f"{path}: neither a checkpoint directory nor a pretrain run with result.json")


def fetch_remote_checkpoint(uri: str) -> Path:
    """A checkpoint directory (or a pretrain run dir) on an object store, copied into a local
    temp dir (removed at exit); ``FileNotFoundError`` naming the URI otherwise."""
    import atexit
    import shutil
    import tempfile

    from fsspec.core import url_to_fs

    fs, root = url_to_fs(uri.rstrip("/"))
    if not fs.exists(posixpath.join(root, CHECKPOINT_FILE)):
        checkpoint = (read_result(uri) or {}).get("checkpoint") or ""
        root = url_to_fs(checkpoint)[1] if "://" in checkpoint else checkpoint
    if not root or not fs.exists(posixpath.join(root, CHECKPOINT_FILE)):
        raise FileNotFoundError(f"{uri}: neither a checkpoint directory nor a pretrain run with result.json")
    local = tempfile.mkdtemp(prefix="openwit-checkpoint-")
    atexit.register(shutil.rmtree, local, True)
    for name in fs.ls(root, detail=False):
        if fs.isfile(name):
            fs.get_file(name, str(Path(local) / posixpath.basename(name)))
    return Path(local)
