"""Stage accounting for the image stages (urlguard, download, imagecheck, imagededup, shards).

Same contract as the curation core: ``stats/<stage>.json`` = ``{"in", "out", "rejected":
{reason: n}}`` with ``in == out + sum(rejected)``, and the dropped rows in
``rejects/<stage>/part-NNNNN.parquet`` (``uid``, ``reason`` + stage-specific columns such as
``duplicate_of`` or ``error_message``). Everything is written to a temp name and renamed, and
``stats/<stage>.json`` is written last: it is the stage's completion marker.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from curation.stage import write_bytes_atomic, write_parquet_atomic


def stats_path(curation_dir: str | Path, stage: str) -> Path:
    """Where a stage's counts live: ``<curation_dir>/stats/<stage>.json``."""
    return Path(curation_dir) / "stats" / f"{stage}.json"


def stage_done(curation_dir: str | Path, stage: str) -> bool:
    """Whether the stage finished (its stats file, written last, exists)."""
    return stats_path(curation_dir, stage).exists()


def read_stats(curation_dir: str | Path, stage: str) -> dict:
    """The stage's ``{"in", "out", "rejected"}`` counts (FileNotFoundError if not run)."""
    return json.loads(stats_path(curation_dir, stage).read_text())


def reject_counts(rejected: pa.Table) -> dict[str, int]:
    """``{reason: rows}`` of a rejects table (sorted by reason, for stable JSON)."""
    return dict(sorted(Counter(rejected.column("reason").to_pylist()).items()))


def write_rejects(curation_dir: str | Path, stage: str, rejected: pa.Table, part: str = "part-00000") -> None:
    """Write one rejects part for ``stage`` (``uid``, ``reason`` first, then the rest)."""
    first = [c for c in ("uid", "reason") if c in rejected.column_names]
    rest = [c for c in rejected.column_names if c not in first]
    write_parquet_atomic(rejected.select(first + rest), Path(curation_dir) / "rejects" / stage / f"{part}.parquet")


def write_stats(curation_dir: str | Path, stage: str, rows_in: int, rows_out: int,
                rejected: dict[str, int], **extra) -> dict:
    """Check ``rows_in == rows_out + sum(rejected)`` and write ``stats/<stage>.json``.

    Raises ``AssertionError`` naming the stage when rows went missing: a silent drop is a bug.
    """
    dropped = sum(rejected.values())
    if rows_in != rows_out + dropped:
        raise AssertionError(f"stage {stage}: {rows_in} in != {rows_out} out + {dropped} rejected")
    stats = {"in": rows_in, "out": rows_out, "rejected": dict(sorted(rejected.items())), **extra}
    write_bytes_atomic(stats_path(curation_dir, stage), (json.dumps(stats, indent=2) + "\n").encode())
    return stats
