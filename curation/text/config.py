"""Configuration and engine-independent bookkeeping of a text-side curation run.

Stages, in order (each writes ``stats/<stage>.json`` and ``rejects/<stage>/``):
``read`` (pool conformance) → ``text`` (normalise, rules, language ID) → ``dedup_url`` /
``dedup_text`` (exact) → ``match`` (query ids, ``no_match``) → ``balance`` (``not_sampled``;
none with ``balance="online"``, which keeps every matched pair for training to balance per epoch
and writes ``balance.parquet`` / ``balance.json``). ``entry_counts.parquet`` holds c_e (counted
after ``match``), ``selected/`` the result.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pyarrow as pa

from curation.stage import DEDUP_KEYS, KEPT, StageStats, merge_counts, stage_reasons, text_stages, write_rejects
from curation.text.balance import BALANCE_MODES
from curation.text.pool import PoolConfig, list_pool_files, pool_file_identity
from curation.text.selection import (
    clear_selection,
    part_marker,
    plan_parts,
    record_parts_plan,
    recorded_num_parts,
    verify_parts,
)
from curation.text.textfilter import TextConfig
from curation.text.threshold import entry_thresholds
from storage.layout import RunLayout



@dataclass(frozen=True)
class CurationConfig:
    """One text-side curation run (candidate pool → selected pairs)."""

    queries: str  # queries.parquet (query_id, query) or a text file, one query per line
    pool: tuple[str, ...]  # pool files or directories (local paths or URIs)
    curation_dir: str  # output dir: <out>/curation
    # balancing threshold: at most ~t pairs kept per entry; None (unset): scaled to the pool as
    # MetaCLIP's t=20k is to its pool, the same tail share of matches (curation/text/threshold.py)
    t: float | None = None
    seed: int = 0  # seed of the deterministic balancing draw
    # "offline": the balance stage keeps the draw's sample (the rest rejected as not_sampled);
    # "online" (MetaCLIP 2): every matched pair is kept and balance.parquet/balance.json go beside
    # the shards, so training draws a fresh balanced sample each epoch (epoch 0 = the offline draw)
    balance: str = "offline"
    # the least number of selected/ part files (rows go to xxh3_64(uid) % parts; more parts when
    # max_part_rows asks for them: the count is recorded in selected/_parts.json)
    num_parts: int = 8
    max_part_rows: int = 1_000_000  # most selected rows a part may hold (the part count grows with the pool)
    dedup_keys: tuple[str, ...] = DEDUP_KEYS  # exact dedup keys, applied in order
    # hash buckets of the dedup shuffle (0: one per 16 MiB of pool files, at least 16, so a
    # bucket's task holds a bounded share of the pool whatever its size; any value gives the same result)
    dedup_buckets: int = 0
    batch_size: int = 4096  # rows per engine batch
    parallelism: int | None = None  # engine workers (None: engine default)
    text: TextConfig = field(default_factory=TextConfig)  # text rules + language ID
    pool_format: PoolConfig = field(default_factory=PoolConfig)  # pool column names / format
    on_bad_file: str = "error"  # a pool file that cannot be read: "error" stops the run, "skip" records it

    def __post_init__(self):
        if self.on_bad_file not in ("error", "skip"):
            raise ValueError(f"on_bad_file must be 'error' or 'skip', not {self.on_bad_file!r}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, not {self.balance!r}")
        if self.num_parts < 1 or self.max_part_rows < 1:
            raise ValueError(f"num_parts ({self.num_parts}) and max_part_rows ({self.max_part_rows}) must be >= 1")

    @property
    def online(self) -> bool:
        """Whether training balances (online balancing): the selection keeps every matched pair."""
        return self.balance == "online"

    @property
    def layout(self) -> RunLayout:
        """The run layout whose curation dir is :attr:`curation_dir`."""
        return RunLayout.of_curation(self.curation_dir)

    def stage_names(self) -> tuple[str, ...]:
        """The stages this configuration runs, in order."""
        return text_stages(self.dedup_keys)

    def reason_stages(self) -> dict[str, str]:
        """``{reason: stage}`` for the stages this configuration runs."""
        return {r: stage for stage in self.stage_names() for r in stage_reasons(stage)}

    def fingerprint_parts(self) -> dict:
        """Everything that changes the selection, by name (not parallelism or batch size):
        the settings, the identity of every pool file (name, size, mtime/ETag) and the content
        hash of the query list."""
        body = as_recorded(self)
        for volatile in ("batch_size", "parallelism", "dedup_buckets", "curation_dir", "pool"):
            body.pop(volatile)
        settings = json.loads(json.dumps(body, sort_keys=True, default=str))
        pool = [pool_file_identity(f) for f in list_pool_files(self.pool)]
        return {"settings": settings, "pool_files": pool, "queries_xxh3": _content_hash(self.queries)}

    def fingerprint(self) -> str:
        """A short hash of :meth:`fingerprint_parts`."""
        text = json.dumps(self.fingerprint_parts(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def english_only_compatible(body: dict) -> dict:
    """A config as recorded: without ``text.languages`` when it is empty (an English-only run),
    so such runs keep the fingerprint and ``_config.json`` they had before worldwide curation."""
    if not body.get("text", {}).get("languages"):
        body = {**body, "text": {k: v for k, v in body["text"].items() if k != "languages"}}
    return body


def as_recorded(config: CurationConfig) -> dict:
    """``config`` as the fingerprint and ``_config.json`` record it: fields added since runs were
    first recorded are left out while they hold their default (:func:`english_only_compatible`;
    ``balance`` when "offline"), so earlier runs keep their fingerprint and resume."""
    body = english_only_compatible(asdict(config))
    if body.get("balance") == "offline":
        body.pop("balance")
    return body


def _content_hash(uri: str) -> str:
    """xxh3-128 of a file's bytes (the query list: a few MB)."""
    import xxhash

    digest = xxhash.xxh3_128()
    with fsspec.open(uri, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _changed(previous: dict, current: dict) -> list[str]:
    """Names of what differs between two fingerprint bodies (settings, pool files, queries)."""
    changed = [f"setting {k}" for k in sorted(set(previous.get("settings", {})) | set(current["settings"]))
               if previous.get("settings", {}).get(k) != current["settings"].get(k)]
    before = {f["file"]: f for f in previous.get("pool_files", [])}
    after = {f["file"]: f for f in current["pool_files"]}
    changed += [f"pool file added: {f}" for f in sorted(set(after) - set(before))]
    changed += [f"pool file removed: {f}" for f in sorted(set(before) - set(after))]
    changed += [f"pool file changed: {f}" for f in sorted(set(after) & set(before)) if after[f] != before[f]]
    if previous.get("queries_xxh3") != current["queries_xxh3"]:
        changed.append("query list content")
    return changed


def prepare_run(config: CurationConfig) -> bool:
    """Get the output dir ready; return False when a complete, verified selection with the same
    fingerprint exists (nothing to do). A different fingerprint (settings, pool files, query
    list) invalidates everything written, and says what changed; the same one keeps the done
    parts whose files check out (a rerun skips them). Temp files of interrupted writes go."""
    layout = config.layout
    current = config.fingerprint_parts()
    fingerprint = hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
    previous = layout.read_json(layout.config_stamp) if layout.exists(layout.config_stamp) else None
    rejects = [layout.rejects_dir(stage) for stage in config.stage_names()]
    for directory in (layout.selected_dir, layout.markers_dir, layout.stats_dir, layout.curation,
                      layout.read_tally_dir, *rejects):
        layout.clean_temp(directory)
    if previous is not None and previous.get("fingerprint") == fingerprint:
        if not layout.exists(layout.parts_plan):  # never got to its balance stage
            return True
        return bool(verify_parts(layout, recorded_num_parts(layout))) or not layout.exists(layout.entry_counts)
    if previous is not None:
        what = _changed(previous.get("inputs", {}), current) or ["the fingerprint format"]
        print(f"[curation] inputs changed since the last run in {layout.curation} ({'; '.join(what)}): "
              "recomputing the selection", flush=True)
    clear_selection(layout)
    layout.write_json(layout.config_stamp, {"fingerprint": fingerprint, "inputs": current,
                                            "config": as_recorded(config)})
    return True


def read_tallies(config: CurationConfig) -> list[dict]:
    """The reader's per-file records (``{file, rows}`` or ``{file, skipped, error}``), one per
    pool file; a pool file the reader never recorded is an error naming it."""
    layout = config.layout
    records = []
    for uri in list_pool_files(config.pool):
        path = layout.read_tally(uri)
        if not layout.exists(path):
            raise RuntimeError(f"pool file {uri} was never read to the end (no {path})")
        records.append(layout.read_json(path))
    return records


def rows_read(config: CurationConfig) -> int:
    """Pool rows the reader counted over every file it read (skipped files excluded)."""
    return sum(int(r.get("rows") or 0) for r in read_tallies(config))


def stage_stats(config: CurationConfig) -> dict[str, StageStats]:
    """Every text stage's accounting, written to ``stats/<stage>.json``: ``read``'s ``in`` is
    the row count the reader measured per pool file, each later stage's ``in`` the previous
    one's ``out``, and the reason tallies come from the part markers. Raises when the parts do
    not account for every row read (a lost part or row). Online balancing's ``balance`` ledger
    adds ``mode`` and ``epoch0_pairs`` (the selected rows the offline draw keeps, counted by the
    balance tasks into the part markers)."""
    layout = config.layout
    records = read_tallies(config)
    markers = [part_marker(layout, i) for i in range(recorded_num_parts(layout))]
    tally = merge_counts([m["reasons"] for m in markers])
    counted = sum(int(r.get("rows") or 0) for r in records)
    if counted != sum(tally.values()):
        raise AssertionError(f"the reader counted {counted} pool rows in {len(records)} files, but the "
                             f"selection parts account for {sum(tally.values())}: rows were lost")
    skipped: dict[str, int] = {}
    for r in records:
        if r.get("skipped"):
            skipped[r["skipped"]] = skipped.get(r["skipped"], 0) + 1
    stage_of = config.reason_stages()
    remaining = counted
    stats: dict[str, StageStats] = {}
    for stage in config.stage_names():
        rejected = {r: n for r, n in sorted(tally.items()) if r != KEPT and stage_of[r] == stage}
        out = remaining - sum(rejected.values())
        extra = {"files": len(records), "files_skipped": skipped} if stage == "read" else {}
        if stage == "balance" and config.online:
            extra = {"mode": "online", "epoch0_pairs": _epoch0_pairs(markers)}
        stats[stage] = StageStats(stage, remaining, out, rejected, extra).check()
        stats[stage].write(layout)
        remaining = out
    if remaining != tally.get(KEPT, 0):
        raise AssertionError(f"{remaining} rows left after the last stage, {tally.get(KEPT, 0)} selected")
    if skipped:
        rows = [r for r in records if r.get("skipped")]
        write_rejects(layout, "read", pa.table({
            "uid": pa.nulls(len(rows), pa.string()), "reason": [r["skipped"] for r in rows],
            "file": [r["file"] for r in rows], "error": [r["error"] for r in rows]}), part="files")
    return stats


def _epoch0_pairs(markers: list[dict]) -> int:
    """The selected rows the offline draw keeps, summed over online-balanced part markers; a part
    with rows but no count (not written by an online balance stage) is an error."""
    missing = [i for i, m in enumerate(markers) if m["rows"] and "epoch0" not in m]
    if missing:
        raise RuntimeError(f"selection parts {missing} hold rows but no epoch-0 count: they were not written by "
                           "an online balance stage")
    return sum(int(m.get("epoch0", 0)) for m in markers)


def record_part_plan(counts: np.ndarray, inputs: np.ndarray, config: CurationConfig) -> dict:
    """The part plan of this run (:func:`curation.text.selection.plan_parts`) from the global
    entry counts and the summed :func:`curation.text.selection.balance_inputs` — the same on
    every engine, known before the balance stage writes a part — recorded in
    ``selected/_parts.json`` (:func:`curation.text.selection.record_parts_plan`) and returned.
    Every engine calls this one function (Beam as a ``Map`` over the counts)."""
    from curation.text.match import load_query_languages

    plan = plan_parts(counts, inputs, config.t, config.max_part_rows, config.num_parts,
                      load_query_languages(config.queries), online=config.online)
    record_parts_plan(config.layout, plan)
    return plan


def write_entry_counts(counts: np.ndarray, layout: RunLayout) -> None:
    """``entry_counts.parquet``: (query_id int32, count int64) for every entry with count > 0."""
    ids = np.flatnonzero(counts)
    table = pa.table({"query_id": pa.array(ids.astype(np.int32)), "count": pa.array(counts[ids].astype(np.int64))})
    layout.write_parquet(table, layout.entry_counts)


def write_balance_metadata(config: CurationConfig, counts: np.ndarray, languages: np.ndarray | None,
                           balance: StageStats) -> None:
    """Online balancing's metadata, what a training loader needs to redraw the balance each epoch
    with the offline draw (curation/text/balance.py), written atomically to the curation dir (the
    shard stage copies both beside the shards):

    - ``balance.parquet``: ``query_id`` (int32), ``count`` (int64: c_e, the numbers of
      ``entry_counts.parquet``), ``t`` (float64: the t the draw gives that entry, per language for
      a worldwide list), one row per entry with c_e > 0, by query_id;
    - ``balance.json``: ``mode``, ``seed``, ``t`` (the setting as given; null: scaled to the
      pool), ``num_queries``, ``matched_pairs`` (the live rows entering the balance stage) and
      ``epoch0_pairs`` (those the offline draw with this seed keeps: epoch 0's sample).

    ``counts``: the global c_e; ``balance``: the balance stage's ledger (:func:`stage_stats`).
    No timestamp: a rerun writes the same bytes."""
    layout = config.layout
    ids = np.flatnonzero(counts)
    t = np.broadcast_to(np.asarray(entry_thresholds(counts, config.t, languages), np.float64), np.shape(counts))
    layout.write_parquet(pa.table({"query_id": pa.array(ids.astype(np.int32)),
                                   "count": pa.array(np.asarray(counts)[ids].astype(np.int64)),
                                   "t": pa.array(t[ids], pa.float64())}), layout.balance_table)
    layout.write_json(layout.balance_meta, {"mode": "online", "seed": config.seed, "t": config.t,
                                            "num_queries": len(counts), "matched_pairs": balance.rows_in,
                                            "epoch0_pairs": balance.extra["epoch0_pairs"]})


def read_entry_counts(layout: RunLayout, num_queries: int) -> np.ndarray:
    """Dense per-entry counts from ``entry_counts.parquet``."""
    table = layout.read_parquet(layout.entry_counts)
    counts = np.zeros(num_queries, dtype=np.int64)
    counts[table.column("query_id").to_numpy()] = table.column("count").to_numpy()
    return counts


def selected_entry_counts(layout: RunLayout, num_queries: int) -> np.ndarray:
    """Per-entry counts over the written selection's recorded parts (for the before/after plot)."""
    counts = np.zeros(num_queries, dtype=np.int64)
    for index in range(recorded_num_parts(layout)):
        column = layout.read_parquet(layout.part(index), columns=["query_ids"]).column("query_ids")
        flat = column.combine_chunks().flatten()
        counts += np.bincount(flat.to_numpy(zero_copy_only=False).astype(np.int64), minlength=num_queries)
    return counts


def plot_entry_counts(before: np.ndarray, after: np.ndarray, t: float, layout: RunLayout) -> str:
    """Log-log rank/count plot of per-entry counts before and after balancing
    (``stats/entry_counts.png``); returns its URI."""
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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    layout.write_bytes(layout.entry_counts_plot, buffer.getvalue())
    return layout.entry_counts_plot


BUCKET_POOL_BYTES = 16 << 20  # pool bytes per dedup bucket when dedup_buckets is 0


def dedup_bucket_count(config: CurationConfig, files: list[str]) -> int:
    """The dedup shuffle's bucket count: ``config.dedup_buckets``, or (0) one per
    :data:`BUCKET_POOL_BYTES` of the pool ``files`` (their sizes, no reading), at least 16."""
    if config.dedup_buckets:
        return config.dedup_buckets
    total = sum(int(pool_file_identity(f).get("size") or 0) for f in files)
    return max(16, -(-total // BUCKET_POOL_BYTES))
