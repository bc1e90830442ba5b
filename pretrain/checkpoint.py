"""Checkpoints of a pretraining run: save, load and resolve them (local or URI), and the run's
``result.json``.

A checkpoint is a directory: ``checkpoint.pt`` (model, optimizer, scheduler, step, configs, the
data streams' positions) +
``tokenizer.json``, replaced atomically (:func:`storage.files.atomic_write_dir`: a crash leaves
the new or the previous one) and read with ``torch.load(weights_only=True)``. Wherever a
checkpoint is taken, its ``checkpoint.pt`` file (any name: the file, as open_clip's
``--pretrained`` takes one) stands for it, with ``tokenizer.json`` beside it; a pretrain run
directory (:class:`storage.layout.PretrainLayout`) stands for its last checkpoint: its
``result.json``, written last and atomically by :func:`write_result`, names it.

Every load goes through :func:`read_weights`: a file torch cannot read (truncated, corrupt, not
a checkpoint) is a :class:`CheckpointError` naming the file, with torch's reason cut to its
first sentence (torch's advice to retry with ``weights_only=False`` is never passed on).
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING

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
CHECKPOINT_KEYS = ("model", "model_config", "step")  # what every openwit checkpoint.pt holds


class CheckpointError(Exception):
    """A checkpoint that cannot be used, in one line naming the file (the CLIs print it as is)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was named (or a file it needs is missing beside it)."""


def _first_sentence(exn: BaseException) -> str:
    """Why torch could not load a file, in a few words: the unpickler's own message (torch wraps
    it in a paragraph of advice) cut to its first sentence; never the weights_only advice."""
    text = str(exn)
    if "WeightsUnpickler error:" in text:  # torch's weights_only wrapper: the reason is inside
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if not reason or "weights_only" in reason:
        return type(exn).__name__
    return reason[:200]


def read_weights(source: str | Path | IO[bytes], name: str | Path, what: str = "openwit checkpoint",
                 keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """``torch.load(source, weights_only=True)`` (a path or a binary stream; no pickled code
    runs) onto the CPU. A file torch cannot read, or whose content is not a dict holding
    ``keys``, is a :class:`CheckpointError` naming ``name``."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{name}: no such {what} file") from None
    except MemoryError:
        raise
    except Exception as exn:  # noqa: BLE001  (torch raises anything from a bad file: one error for all)
        raise CheckpointError(f"{name}: not a readable {what} (truncated or corrupt: {_first_sentence(exn)})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        article = "an" if what[0] in "aeiou" else "a"
        raise CheckpointError(f"{name}: not {article} {what} (no {', '.join(missing)} in it)")
    return state


def checkpoint_file(path: str | Path) -> Path:
    """The ``checkpoint.pt`` of ``path``: the file itself, or the one in the checkpoint directory
    (:func:`storage.files.completed_dir`: after a save interrupted between its two renames, the
    checkpoint it was replacing)."""
    path = Path(str(path).removeprefix("file://"))
    return path if path.is_file() else completed_dir(path) / CHECKPOINT_FILE


def tokenizer_file(path: str | Path) -> Path:
    """The ``tokenizer.json`` beside the checkpoint file of ``path``;
    :class:`CheckpointNotFoundError` naming both when it is not there."""
    file = checkpoint_file(path)
    tokenizer = file.with_name(TOKENIZER_FILE)
    if not tokenizer.is_file():
        raise CheckpointNotFoundError(f"{tokenizer}: missing: a checkpoint needs its {TOKENIZER_FILE} beside {file.name}")
    return tokenizer


def save_checkpoint(path: str | Path, model: CLIP, optimizer, step: int, cfg: TrainConfig, data: dict | None = None) -> Path:
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
        "data": data,  # the data streams' positions and counts (pretrain.train.data_state): exact resume
    }

    def write(folder: Path) -> None:
        torch.save(state, folder / CHECKPOINT_FILE)
        (folder / TOKENIZER_FILE).write_text(cfg.tokenizer_json)

    return atomic_write_dir(path, write)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (its file, or its directory: :func:`checkpoint_file`) with
    :func:`read_weights` (weights_only: no pickled code runs). No file is a
    :class:`CheckpointNotFoundError`, an unreadable one a :class:`CheckpointError`, each naming it."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointNotFoundError(f"{file}: no checkpoint file in checkpoint directory {path}")
    return read_weights(file, file)


def load_model(path: str | Path) -> tuple[CLIP, CaptionTokenizer, dict]:
    """Model (eval mode, CPU) + tokenizer + raw state from a (local) checkpoint file or directory."""
    tokenizer_json = tokenizer_file(path)  # before the (large) state: a missing one is named at once
    state = load_checkpoint(path)
    model = create_model(CLIPConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    tokenizer = CaptionTokenizer.from_file(tokenizer_json, model.context_length)
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


def _not_a_checkpoint(path: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(f"{path}: neither a checkpoint (its .pt file or directory) nor a pretrain run "
                                   f"with result.json")


def resolve_checkpoint(path: str) -> Path:
    """A local checkpoint for ``path``: a checkpoint file (returned as is), a checkpoint
    directory, or a pretrain run directory (its ``result.json`` names the last checkpoint), local
    or on an object store (then copied locally: :func:`fetch_remote_checkpoint`). Its
    ``tokenizer.json`` is checked beside the file (:func:`tokenizer_file`).
    :class:`CheckpointNotFoundError` naming the path otherwise."""
    if not is_local(path):
        return fetch_remote_checkpoint(path)
    p = Path(path.removeprefix("file://"))
    if checkpoint_file(p).is_file():
        tokenizer_file(p)
        return p
    checkpoint = (read_result(str(p)) or {}).get("checkpoint") if p.is_dir() else None
    if checkpoint and checkpoint_file(checkpoint).is_file():
        tokenizer_file(checkpoint)
        return Path(checkpoint)
    raise _not_a_checkpoint(path)


def fetch_remote_checkpoint(uri: str) -> Path:
    """A checkpoint file (with the ``tokenizer.json`` beside it), a checkpoint directory or a
    pretrain run dir on an object store, copied into a local temp dir (removed at exit): the local
    checkpoint file or directory; :class:`CheckpointNotFoundError` naming the URI otherwise."""
    import atexit
    import shutil
    import tempfile

    from fsspec.core import url_to_fs

    fs, root = url_to_fs(uri.rstrip("/"))
    single_file = fs.isfile(root)
    if single_file:  # the checkpoint file itself: it and its tokenizer
        names = [root, posixpath.join(posixpath.dirname(root), TOKENIZER_FILE)]
        if not fs.isfile(names[1]):
            raise CheckpointNotFoundError(f"{uri.rstrip('/').rsplit('/', 1)[0]}/{TOKENIZER_FILE}: missing: "
                                          f"a checkpoint needs its {TOKENIZER_FILE} beside {posixpath.basename(root)}")
    else:
        if not fs.exists(posixpath.join(root, CHECKPOINT_FILE)):
            checkpoint = (read_result(uri) or {}).get("checkpoint") or ""
            root = url_to_fs(checkpoint)[1] if "://" in checkpoint else checkpoint
        if not root or not fs.exists(posixpath.join(root, CHECKPOINT_FILE)):
            raise _not_a_checkpoint(uri)
        names = [name for name in fs.ls(root, detail=False) if fs.isfile(name)]
    local = tempfile.mkdtemp(prefix="openwit-checkpoint-")
    atexit.register(shutil.rmtree, local, True)
    for name in names:
        fs.get_file(name, str(Path(local) / posixpath.basename(name)))
    return Path(local) / posixpath.basename(root) if single_file else Path(local)
