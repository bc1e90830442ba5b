"""Where a run finds its local data sets (eval sets, the sample pool, the sample corpora): a data
directory holding ``manifest.json`` (``{name: path}``), named by a ``--data-dir`` flag or the
``OPENWIT_DATA`` environment variable (``make sample-data`` writes ``<repo>/data/sample``, the
default). Product code reads data sets through this, never through the demo's tooling."""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA_ENV = "OPENWIT_DATA"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"


def data_dir(flag: str | Path | None = None) -> Path:
    """The data directory: ``flag`` if given, else ``$OPENWIT_DATA``, else ``<repo>/data/sample``."""
    return Path(flag or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def data_manifest(flag: str | Path | None = None) -> dict[str, str]:
    """The data directory's ``manifest.json``; a missing one is an error naming the file, the
    flag/variable that chose it and how to fetch the sample data."""
    path = data_dir(flag) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (data dir from --data-dir, ${DATA_ENV} or the default): "
                                f"run `make sample-data` first, or point ${DATA_ENV} at a data dir")
    return json.loads(path.read_text())
