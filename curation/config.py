"""Configuration and engine-independent bookkeeping of a text-side curation run.

Stages, in order (each writes ``stats/<stage>.json`` and ``rejects/<stage>/``):
``read`` (pool conformance) → ``text`` (normalise, rules, language ID) → ``dedup_url`` /
``dedup_text`` (exact) → ``match`` (query ids, ``no_match``) → ``balance`` (``not_sampled``).
``entry_counts.parquet`` holds c_e (counted after ``match``), ``selected/`` the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.pool import PoolConfig
from curation.selection import clear_markers, part_counts, selection_complete
from curation.stage import (
    KEPT,
    StageStats,
    merge_counts,
    write_bytes_atomic,
    write_parquet_atomic,
)
from curation.textfilter import TextConfig

# the reasons each stage can give (a reason belongs to exactly one stage)
REASONS = {
    "read": ("null_url", "null_text", "invalid_utf8"),
    "text": ("empty_text", "text_too_short", "text_too_long", "not_english"),
    "dedup_url": ("duplicate_url",),
    "dedup_text": ("duplicate_text",),
    "match": ("no_match",),
    "balance": ("not_sampled",),
}


@dataclass(frozen=True)
class CurationConfig:
    """One text-side curation run (candidate pool → selected pairs)."""

    queries: str  # queries.parquet (query_id, query) or a text file, one query per line
    pool: tuple[str, ...]  # pool files or directories (local paths or URIs)
    curation_dir: str  # output dir: <out>/curation
    t: float | None = None  # balancing threshold (~t pairs kept per entry); None: scaled to the pool
    seed: int = 0  # seed of the deterministic balancing draw
    num_parts: int = 8  # selected/ part files (rows go to xxh3_64(uid) % num_parts)
    dedup_keys: tuple[str, ...] = ("url", "text")  # exact dedup keys, applied in order
    dedup_buckets: int = 16  # hash buckets of the dedup shuffle (any value gives the same result)
    batch_size: int = 4096  # rows per engine batch
    parallelism: int | None = None  # engine workers (None: engine default)
    text: TextConfig = field(default_factory=TextConfig)  # text rules + language ID
    pool_format: PoolConfig = field(default_factory=PoolConfig)  # pool column names / format

    def dir(self, name: str) -> str:
        """``<curation_dir>/<name>``."""
        return f"{self.curation_dir}/{name}"

    def stage_names(self) -> tuple[str, ...]:
        """The stages this configuration runs, in order."""
        dedup = tuple(f"dedup_{k}" for k in self.dedup_keys)
        return ("read", "text", *dedup, "match", "balance")

    def reason_stages(self) -> dict[str, str]:
        """``{reason: stage}`` for the stages this configuration runs."""
        return {r: stage for stage in self.stage_names() for r in REASONS.get(stage, (f"duplicate_{stage[6:]}",))}

    def fingerprint(self) -> str:
        """Hash of everything that changes the selection (not parallelism or batch size)."""
        body = asdict(self)
        for volatile in ("batch_size", "parallelism", "dedup_buckets", "curation_dir"):
            body.pop(volatile)
        body["queries_size"] = os.path.getsize(self.queries) if os.path.exists(self.queries) else None
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_run(config: CurationConfig) -> bool:
    """Get the output dir ready; return False when a complete selection with the same
    fingerprint exists (nothing to do). A different fingerprint invalidates everything written
    (parts, markers, rejects, stats); the same one keeps the done parts, which a rerun skips."""
    root = Path(config.curation_dir)
    stamp = root / "_config.json"
    fingerprint = config.fingerprint()
    selected = config.dir("selected")
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return not selection_complete(selected, config.num_parts)
    clear_markers(selected)
    for old in Path(selected).glob("part-*.parquet") if Path(selected).exists() else []:
        old.unlink()
    for name in ("rejects", "stats"):
        shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"fingerprint": fingerprint, "config": asdict(config)}, indent=2, default=str) + "\n"
    write_bytes_atomic(stamp, body.encode())
    return True


def stage_stats(config: CurationConfig) -> dict[str, StageStats]:
    """Every stage's accounting from the reason tallies of the done parts, written to
    ``stats/<stage>.json``: a stage's ``in`` is the previous stage's ``out``."""
    tally = merge_counts([part_counts(config.dir("selected"), i) for i in range(config.num_parts)])
    stage_of = config.reason_stages()
    remaining = sum(tally.values())
    stats: dict[str, StageStats] = {}
    for stage in config.stage_names():
        rejected = {r: n for r, n in sorted(tally.items()) if r != KEPT and stage_of[r] == stage}
        out = remaining - sum(rejected.values())
        stats[stage] = StageStats(stage, remaining, out, rejected).check()
        stats[stage].write(config.dir("stats"))
        remaining = out
    if remaining != tally.get(KEPT, 0):
        raise AssertionError(f"{remaining} rows left after the last stage, {tally.get(KEPT, 0)} selected")
    return stats


def write_entry_counts(counts: np.ndarray, path: str) -> None:
    """``entry_counts.parquet``: (query_id int32, count int64) for every entry with count > 0."""
    ids = np.flatnonzero(counts)
    table = pa.table({"query_id": pa.array(ids.astype(np.int32)), "count": pa.array(counts[ids].astype(np.int64))})
    write_parquet_atomic(table, path)


def read_entry_counts(path: str, num_queries: int) -> np.ndarray:
    """Dense per-entry counts from ``entry_counts.parquet``."""
    table = pq.read_table(path)
    counts = np.zeros(num_queries, dtype=np.int64)
    counts[table.column("query_id").to_numpy()] = table.column("count").to_numpy()
    return counts


def selected_entry_counts(selected_dir: str, num_queries: int) -> np.ndarray:
    """Per-entry counts over the written selection (for the before/after plot)."""
    counts = np.zeros(num_queries, dtype=np.int64)
    for part in sorted(Path(selected_dir).glob("part-*.parquet")):
        flat = pq.read_table(part, columns=["query_ids"]).column("query_ids").combine_chunks().flatten()
        counts += np.bincount(flat.to_numpy(zero_copy_only=False).astype(np.int64), minlength=num_queries)
    return counts


def plot_entry_counts(before: np.ndarray, after: np.ndarray, t: float, path: str) -> str:
    """Log-log rank/count plot of per-entry counts before and after balancing (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for counts, label in ((before, "matched (c_e)"), (after, "selected")):
        ranked = np.sort(counts[counts > 0])[::-1]
        if len(ranked):
            ax.loglog(np.arange(1, len(ranked) + 1), ranked, label=label)
    ax.axhline(t, color="grey", linestyle="--", linewidth=0.8, label=f"t = {t:g}")
    ax.set_xlabel("entry rank")
    ax.set_ylabel("pairs per entry")
    ax.set_title("Entry counts before and after balancing")
    ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
