"""Sample files derived from the raw registry files (image pools, served trees, ...).

Each builder takes (data dir, manifest so far) and returns new manifest entries. A builder
must be idempotent: skip work whose output already exists (write to a temp name, rename).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Builder = Callable[[Path, dict[str, str]], dict[str, str]]

BUILDERS: list[Builder] = []


def build_all(root: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Run every registered builder in order; return the entries they add."""
    added: dict[str, str] = {}
    for builder in BUILDERS:
        added.update(builder(root, {**manifest, **added}))
    return added
