"""The run layout: every path of a run named in one place, and all of its I/O.

A run directory is a local path or an fsspec URI (``s3://bucket/run``, ``gs://…``,
``memory://…``); a :class:`Store` resolves its filesystem once and every stage, text and image,
reads and writes through it, so a worker on any node writes straight to the run's storage. The
classes below name every file of a run; nothing outside this package builds a run path::

    <out>/queries/queries.parquet, metadata.json, stats.json        QueryListLayout
    <out>/queries/metadata/<code>.json                             a worldwide list: one language's entries
    <out>/queries/_counts/<key>.parquet (+ marker <key>)            counted n-grams (a rerun skips counting)
    <out>/pool/{pairs,rejects,stats,done}/                          PoolLayout (build_wit.py --warc/--wat)
    <out>/curation/_config.json                       selection fingerprint (+ the config)
    <out>/curation/_read/<file-hash>.json             rows read per pool file (counted by the reader)
    <out>/curation/selected/part-NNNNN.parquet        the selection
    <out>/curation/selected/_done/part-NNNNN          completion marker + reason tally of a part
    <out>/curation/selected/_parts.json               the part count, derived from the rows (max_part_rows)
    <out>/curation/entry_counts.parquet               c_e per entry
    <out>/curation/balance.parquet, balance.json      online balancing (--balance online): c_e + t per entry, seed…
    <out>/curation/rejects/<stage>/<part>.parquet     dropped rows: uid, reason (+ stage columns)
    <out>/curation/stats/<stage>.json                 {stage, in, out, rejected: {reason: n}}
    <out>/curation/stats/summary.json, entry_counts.png
    <out>/curation/images_fingerprint.json            what the image stages' results depend on
    <out>/curation/download/pNNNNNN/_part.json        a selection part's guard counts + download shards (written last)
    <out>/curation/download/pNNNNNN/rows/KKKKK.parquet a download shard's rows: uid, url, text, query_ids, source
    <out>/curation/download/pNNNNNN/<pass>/KKKKK.tar|.parquet   img2dataset output (pass0, retry)
    <out>/curation/checked/pNNNNNN_KKKKK.parquet      checked, resized images + hashes + metadata (last)
    <out>/curation/checked/_nodes/pNNNNNN_KKKKK.json  the shard task's node and counts
    <out>/curation/dedup/…, shardplan/pNNNNNN.parquet scratch of image dedup and shard planning
    <out>/curation/decontaminate/eval_index.parquet   eval ids + pHash codes (--decontaminate)
    <out>/curation/decontaminate/eval_text.parquet    eval ids + URLs + caption keys (--decontaminate)
    <out>/curation/shards/NNNNN.tar, NNNNN.parquet, stats.json   the WebDataset shards
    <out>/curation/shards/balance.parquet, balance.json           online balancing's metadata, beside the shards
    <out>/curation/heldout/…                                     held-out pairs (--holdout-fraction), same layout
    <out>/curation/report.html, report/*.png
    <out>/curation/removed/<task>.parquet             removed-links ledger: uid, url, list, kind, hash, distance, source
    <out>/datasheet.md, datasheet.json                the run's datasheet (curation/datasheet.py)
    <out>/pretrain/<run>/checkpoints/, metrics.jsonl, loss.png, result.json, eval/<name>.json   PretrainLayout
    <out>/reports/contamination/{results.json, details.json, report.md, report.html, *.png}     ReportLayout

Writes are atomic (:func:`storage.files.atomic_write`: temp + rename locally, one PUT on object
stores) and completion markers are written last. Listings skip temp names and dot files, so an
interrupted write never disturbs a rerun; :meth:`Store.clean_temp` removes them.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from fsspec.core import url_to_fs

from storage.files import atomic_write, expand_glob, is_temp_name

PARQUET_WRITE = {"compression": "zstd", "write_statistics": True, "store_schema": True}


def part_name(index: int) -> str:
    """``part-00042`` for index 42 (the one place a part name is formatted: selection parts,
    web-pool parts, the rejects of a stage run per part)."""
    return f"part-{index:05d}"


def task_part_name(index: int) -> str:
    """``p000042``: the file of task ``index`` in a per-part scratch or rejects dir (checked parts)."""
    return f"p{index:06d}"


def bucket_name(index: int, kind: str = "b") -> str:
    """``b00042`` (a dedup bucket), ``c00042`` (a pHash band chunk)."""
    return f"{kind}{index:05d}"


SPLITS = ("shards", "heldout")  # training shards / held-out pairs (curation/images/holdout.py)


def shard_name(shard_id: int) -> str:
    """``00042`` for shard 42 (the one place a final shard name is formatted)."""
    return f"{shard_id:05d}"


def numbered_shards(directory: str) -> list[str]:
    """The ``NNNNN.tar`` shards in ``directory`` (local or URI), in order; none is an error naming it."""
    found = [p for p in expand_glob(posixpath.join(directory.rstrip("/"), "*.tar"))
             if posixpath.basename(p)[:-4].isdigit()]
    if not found:
        raise FileNotFoundError(f"no NNNNN.tar shards in {directory}")
    return found


BALANCE_TABLE = "balance.parquet"  # online balancing: query_id, count (c_e), t per matched entry
BALANCE_META = "balance.json"  # online balancing: mode, seed, t as given, num_queries, matched / epoch-0 pairs


def balance_files(shards_dir: str) -> tuple[str, str]:
    """(``balance.parquet``, ``balance.json``) of online balancing (``build_wit.py --balance
    online``) in the shard directory ``shards_dir`` (local or URI): beside the ``NNNNN.tar``
    shards, so a loader finds them from a ``--train-data`` pattern's directory."""
    directory = str(shards_dir).rstrip("/")
    return posixpath.join(directory, BALANCE_TABLE), posixpath.join(directory, BALANCE_META)


def shard_pattern(directory: str) -> str:
    """The brace pattern of the numbered ``.tar`` shards in ``directory`` (local or URI), as
    open_clip, webdataset and ``pretrain.py --train-data`` take it: ``DIR/{00000..00042}.tar``.
    No shard is an error naming the directory."""
    stems = [posixpath.basename(p)[:-4] for p in numbered_shards(directory)]
    return f"{directory.rstrip('/')}/{{{stems[0]}..{stems[-1]}}}.tar"


class ShardsNotFoundError(FileNotFoundError):
    """A part of a shard spec that names no file (``reason``: "no file matches", ...), or a
    named shard that is missing. ``part`` is the part as given, for a one-line CLI message."""

    def __init__(self, part: str, reason: str):
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def _existing(paths: list[str], fs) -> set[str]:
    """Those of ``paths`` (``fs`` paths, no protocol) that are files: one listing per directory,
    not one request per shard (a 10,000-shard pattern on an object store is a few listings)."""
    found: set[str] = set()
    for folder in dict.fromkeys(posixpath.dirname(p) for p in paths):
        try:
            found.update(e["name"].rstrip("/") for e in fs.ls(folder, detail=True) if e["type"] == "file")
        except (FileNotFoundError, NotADirectoryError):
            pass
    return found & set(paths)


def expand_shards(spec: str) -> list[str]:
    """Shard files of ``spec``, in order: a shard directory (its ``NNNNN.tar``), a brace pattern
    (``DIR/{00000..00009}.tar``), a glob, or several of these joined by ``::`` (local paths or
    fsspec URIs). A part that matches no file, or a named shard missing, is a
    :class:`ShardsNotFoundError` naming the part (and the shard)."""
    import webdataset as wds

    files: list[str] = []
    for part in spec.split("::"):
        fs, local = url_to_fs(part)
        if any(c in part for c in "*?["):  # a glob: what it finds exists
            found = expand_glob(part)
            if not found:
                raise ShardsNotFoundError(part, "no file matches")
        elif "{" not in part and fs.isdir(local):
            try:
                found = numbered_shards(part)
            except FileNotFoundError:
                raise ShardsNotFoundError(part, "no NNNNN.tar shards in this directory") from None
        else:  # a brace pattern or a file: every name it spells must exist
            found = list(wds.SimpleShardList(part).urls)
            named = [url_to_fs(f)[1] for f in found]
            present = _existing(named, fs)
            if not present:
                raise ShardsNotFoundError(part, "no file matches")
            missing = next((f for f, n in zip(found, named) if n not in present), None)
            if missing:
                raise ShardsNotFoundError(part, f"{missing}: shard not found")
        files.extend(found)
    return files


@dataclass(frozen=True)
class Store:
    """The I/O of one directory of a run (``root``: a local path or fsspec URI): reads, atomic
    writes, listings that skip temp names. Every layout below is a Store."""

    root: str  # local path or fsspec URI

    def __post_init__(self):
        object.__setattr__(self, "root", str(self.root).rstrip("/") or "/")

    def join(self, *parts: str) -> str:
        """``root/part/…``."""
        return posixpath.join(self.root, *parts)

    @property
    def fs(self):
        """The fsspec filesystem of the run (fsspec caches instances: cheap to call)."""
        return url_to_fs(self.root)[0]

    def path(self, uri: str) -> str:
        """``uri`` as a path of :attr:`fs` (no protocol)."""
        return url_to_fs(uri)[1]

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self.path(uri))

    def size(self, uri: str) -> int:
        return int(self.fs.size(self.path(uri)))

    def open(self, uri: str, mode: str = "rb"):
        """Open a file of the run for reading (writes go through the atomic writers)."""
        return self.fs.open(self.path(uri), mode)

    def read_bytes(self, uri: str) -> bytes:
        return self.fs.cat_file(self.path(uri))

    def read_json(self, uri: str):
        return json.loads(self.read_bytes(uri))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` atomically (temp + rename locally, one PUT on object stores)."""
        atomic_write(uri, lambda f: f.write(data))

    def write_json(self, uri: str, body) -> None:
        self.write_bytes(uri, (json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode())

    def write_parquet(self, table: pa.Table, uri: str) -> None:
        """Write ``table`` atomically with fixed writer settings (deterministic bytes)."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, **PARQUET_WRITE)
        self.write_bytes(uri, buffer.getvalue())

    def read_parquet(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        """One parquet file of the run; a damaged file raises ValueError naming it."""
        try:
            return pq.read_table(self.path(uri), columns=columns, filesystem=self.fs)
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"{uri}: unreadable parquet ({err})") from err

    def parquet_rows(self, uri: str) -> int:
        """Rows of a parquet file from its footer; a damaged file raises ValueError naming it."""
        try:
            with self.open(uri) as f:
                return pq.ParquetFile(f).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"{uri}: truncated or corrupt parquet file ({err})") from err

    def read_parquets(self, uris: list[str], columns: list[str]) -> pa.Table:
        """Several parquet files concatenated in order (an empty table of strings if none)."""
        tables = [self.read_parquet(u, columns) for u in uris]
        if not tables:
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        return pa.concat_tables(tables, promote_options="permissive")

    def list(self, directory: str, suffix: str = "") -> list[str]:
        """Files directly in ``directory`` ending with ``suffix``, sorted, as URIs of the run;
        temp names and dot files are never listed. A missing directory lists nothing."""
        fs, base = self.fs, self.path(directory)
        if not fs.isdir(base):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(base, detail=False)]
        keep = sorted(n for n in names if n.endswith(suffix) and not n.startswith(".") and not is_temp_name(n))
        return [posixpath.join(directory, n) for n in keep if fs.isfile(posixpath.join(base, n))]

    def remove(self, uri: str) -> None:
        """Remove one file if it exists."""
        if self.exists(uri):
            self.fs.rm(self.path(uri))

    def remove_tree(self, directory: str) -> None:
        """Remove a directory and everything in it, if it exists."""
        if self.fs.exists(self.path(directory)):
            self.fs.rm(self.path(directory), recursive=True)

    def clean_temp(self, directory: str) -> int:
        """Remove our temp files left in ``directory`` by interrupted writes; returns how many."""
        fs, base = self.fs, self.path(directory)
        if not fs.isdir(base):
            return 0
        stale = [p for p in fs.ls(base, detail=False) if is_temp_name(p) and fs.isfile(p)]
        for p in stale:
            fs.rm(p)
        return len(stale)


@dataclass(frozen=True)
class QueryListLayout(Store):
    """``<out>/queries/``: the query list and its counting cache."""

    @property
    def parquet(self) -> str:
        return self.join("queries.parquet")

    @property
    def metadata(self) -> str:
        """MetaCLIP's ``metadata.json``: the entries as a JSON list, in id order."""
        return self.join("metadata.json")

    def language_metadata(self, language: str) -> str:
        """A worldwide list's ``metadata/<code>.json``: one language's entries, in id order."""
        return self.join("metadata", f"{language}.json")

    @property
    def stats(self) -> str:
        return self.join("stats.json")

    def counts(self, key: str) -> tuple[str, str]:
        """(table, marker) of the n-gram counts of one set of inputs (``key``: their identity hash)."""
        return self.join("_counts", f"{key}.parquet"), self.join("_counts", key)


@dataclass(frozen=True)
class PoolLayout(Store):
    """A web pool extracted from WARC/WAT files (``build_pool.py --out``; ``<out>/pool/`` of
    ``build_wit.py --warc/--wat``): ``pairs/`` (what ``--pool`` reads), ``rejects/<stage>/``,
    ``stats/<stage>.json``, ``done/<part>.json`` markers."""

    @property
    def pairs_dir(self) -> str:
        return self.join("pairs")

    def pairs(self, index: int) -> str:
        return self.join("pairs", f"{part_name(index)}.parquet")

    def reject_part(self, stage: str, index: int) -> str:
        return self.join("rejects", stage, f"{part_name(index)}.parquet")

    def stats(self, stage: str) -> str:
        return self.join("stats", f"{stage}.json")

    def marker(self, index: int) -> str:
        return self.join("done", f"{part_name(index)}.json")


@dataclass(frozen=True)
class PretrainLayout(Store):
    """One pretraining run (``<out>/pretrain/<run>``, or any ``pretrain.py --out``)."""

    @property
    def checkpoints_dir(self) -> str:
        """Checkpoint directories (``step_NNNNNNN``; Ray Train's own below it when under Ray)."""
        return self.join(CHECKPOINTS)

    def checkpoint(self, step: int) -> str:
        return self.join(CHECKPOINTS, f"step_{step:08d}")

    @property
    def metrics(self) -> str:
        return self.join("metrics.jsonl")

    @property
    def loss_plot(self) -> str:
        return self.join("loss.png")

    @property
    def sample_ids_dir(self) -> str:
        return self.join("samples")

    def sample_ids(self, rank: int) -> str:
        """``samples/rank-NNNNN.jsonl``: each step's sample ids on ``rank`` (``--log-sample-ids``)."""
        return self.join("samples", f"rank-{rank:05d}.jsonl")

    def step_logs(self) -> list[str]:
        """The per-step logs present (metrics.jsonl, the sample-id logs), as URIs of this store."""
        logs = [self.metrics] if self.exists(self.metrics) else []
        return logs + self.list(self.sample_ids_dir, ".jsonl")

    @property
    def tokenizer(self) -> str:
        return self.join("tokenizer.json")

    @property
    def result(self) -> str:
        """``result.json`` (last metrics, the final checkpoint): written last, the run's marker."""
        return self.join("result.json")

    def eval_result(self, name: str) -> str:
        """``eval/<name>.json``: one evaluation of the run."""
        return self.join("eval", f"{name}.json")


CHECKPOINTS = "checkpoints"  # a pretrain run's checkpoint dir (also Ray Train's run name)


@dataclass(frozen=True)
class ReportLayout(Store):
    """A contamination report directory (``<out>/reports/contamination`` by default)."""

    @property
    def results(self) -> str:
        return self.join("results.json")

    @property
    def details(self) -> str:
        return self.join("details.json")

    @property
    def markdown(self) -> str:
        return self.join("report.md")

    @property
    def html(self) -> str:
        return self.join("report.html")

    def asset(self, name: str) -> str:
        """A plot or picture of the report (beside ``report.html``, linked by its bare name)."""
        return self.join(name)

    def cache(self, name: str) -> str:
        """``cache/<name>``: embeddings kept between reports (per shard version and detector)."""
        return self.join("cache", name)

    @property
    def detector(self) -> str:
        """The copy detector a report trained itself (reused by a rerun)."""
        return self.join("copy_detector.pt")


@dataclass(frozen=True)
class RunLayout(Store):
    """Names of one run directory (``root`` = the ``--out`` path or URI) and its I/O."""

    @classmethod
    def of_curation(cls, curation_dir: str) -> RunLayout:
        """The layout whose ``curation`` dir is ``curation_dir`` (``<out>/curation``)."""
        return cls(posixpath.dirname(str(curation_dir).rstrip("/")) or ".")

    # -- queries, pool, pretraining, reports ---------------------------------------------------
    @property
    def queries(self) -> QueryListLayout:
        return QueryListLayout(self.join("queries"))

    @property
    def queries_parquet(self) -> str:
        return self.queries.parquet

    @property
    def pool(self) -> PoolLayout:
        """The pool extracted from web archives (``build_wit.py --warc/--wat``)."""
        return PoolLayout(self.join("pool"))

    def pretrain(self, run: str) -> PretrainLayout:
        return PretrainLayout(self.join("pretrain", run))

    @property
    def contamination_report(self) -> ReportLayout:
        return ReportLayout(self.join("reports", "contamination"))

    @property
    def datasheet_md(self) -> str:
        """``<out>/datasheet.md``: the run's datasheet (Gebru et al.), generated from its ledgers."""
        return self.join("datasheet.md")

    @property
    def datasheet_json(self) -> str:
        """``<out>/datasheet.json``: the datasheet's numbers and settings, machine-readable."""
        return self.join("datasheet.json")

    # -- curation ----------------------------------------------------------------------------
    @property
    def curation(self) -> str:
        return self.join("curation")

    def cur(self, *parts: str) -> str:
        """``<out>/curation/part/…``."""
        return posixpath.join(self.curation, *parts)

    @property
    def config_stamp(self) -> str:
        return self.cur("_config.json")

    @property
    def read_tally_dir(self) -> str:
        return self.cur("_read")

    def read_tally(self, pool_file: str) -> str:
        """Where the reader records how many rows it read from ``pool_file``."""
        return self.cur("_read", f"{xxhash.xxh3_64_hexdigest(pool_file.encode())}.json")

    @property
    def selected_dir(self) -> str:
        return self.cur("selected")

    def part(self, index: int) -> str:
        return self.cur("selected", f"{part_name(index)}.parquet")

    @property
    def markers_dir(self) -> str:
        return self.cur("selected", "_done")

    def marker(self, index: int) -> str:
        return self.cur("selected", "_done", part_name(index))

    @property
    def parts_plan(self) -> str:
        """``selected/_parts.json``: the selection's part count, derived from the balance inputs."""
        return self.cur("selected", "_parts.json")

    @property
    def rejects_root(self) -> str:
        return self.cur("rejects")

    def rejects_dir(self, stage: str) -> str:
        return self.cur("rejects", stage)

    def reject_part(self, stage: str, name: str) -> str:
        return self.cur("rejects", stage, f"{name}.parquet")

    @property
    def stats_dir(self) -> str:
        return self.cur("stats")

    def stats(self, stage: str) -> str:
        return self.cur("stats", f"{stage}.json")

    @property
    def summary(self) -> str:
        return self.cur("stats", "summary.json")

    @property
    def entry_counts(self) -> str:
        return self.cur("entry_counts.parquet")

    @property
    def balance_table(self) -> str:
        """``balance.parquet`` of an online-balanced selection (copied beside the shards)."""
        return self.cur(BALANCE_TABLE)

    @property
    def balance_meta(self) -> str:
        """``balance.json`` of an online-balanced selection (copied beside the shards)."""
        return self.cur(BALANCE_META)

    @property
    def removed_dir(self) -> str:
        """``removed/``: the removed-links ledger (hash-list matches, takedowns): URL, list, hash, never bytes."""
        return self.cur("removed")

    def removed_part(self, name: str) -> str:
        """``removed/<name>.parquet``: one task's (or one takedown's) removed links."""
        return self.cur("removed", f"{name}.parquet")

    @property
    def entry_counts_plot(self) -> str:
        return self.cur("stats", "entry_counts.png")

    @property
    def images_fingerprint(self) -> str:
        return self.cur("images_fingerprint.json")

    @property
    def download_dir(self) -> str:
        return self.cur("download")

    def download_part(self, index: int) -> str:
        """``download/pNNNNNN``: everything the download of selection part ``index`` writes."""
        return self.cur("download", task_part_name(index))

    def download_manifest(self, index: int) -> str:
        """``download/pNNNNNN/_part.json``: the part task's counts and download shards (its
        completion marker)."""
        return self.cur("download", task_part_name(index), "_part.json")

    def download_rows(self, index: int, shard: int) -> str:
        """``download/pNNNNNN/rows/KKKKK.parquet``: the rows of one download shard."""
        return self.cur("download", task_part_name(index), "rows", f"{shard:05d}.parquet")

    def download_pass(self, index: int, name: str) -> str:
        """img2dataset's output folder of one pass (``pass0``, ``retry``) of part ``index``."""
        return self.cur("download", task_part_name(index), name)

    def download_input(self, index: int, name: str, shard: int) -> str:
        """The feather file img2dataset's downloader reads (and deletes) for one shard and pass."""
        return self.cur("download", task_part_name(index), "_input", f"{name}_{shard:05d}.feather")

    @property
    def eval_index(self) -> str:
        """The eval images' pHash codes that ``--decontaminate`` removes from training."""
        return self.cur("decontaminate", "eval_index.parquet")

    @property
    def eval_text_index(self) -> str:
        """The eval images' URLs and caption keys that ``--decontaminate`` keeps out before download."""
        return self.cur("decontaminate", "eval_text.parquet")

    @property
    def checked_dir(self) -> str:
        return self.cur("checked")

    def checked_part(self, name: str) -> str:
        return self.cur("checked", f"{name}.parquet")

    @staticmethod
    def checked_name(index: int, shard: int) -> str:
        """The checked part of download shard ``shard`` of selection part ``index``: ``p000003_00007``."""
        return f"{task_part_name(index)}_{shard:05d}"

    def checked_node_record(self, name: str) -> str:
        """``checked/_nodes/<name>.json``: the node and counts of the task that wrote checked part ``name``."""
        return self.cur("checked", "_nodes", f"{name}.json")

    def scratch(self, stage: str, *parts: str) -> str:
        """``curation/<stage>/…``: a stage's scratch files (``dedup``, ``shardplan``), removed
        when the stage ends."""
        if stage not in SCRATCH:
            raise ValueError(f"unknown scratch dir {stage!r}: one of {SCRATCH}")
        return self.cur(stage, *parts)

    @property
    def shards_dir(self) -> str:
        return self.cur("shards")

    def split_dir(self, split: str = "shards") -> str:
        """``shards/`` (training) or ``heldout/`` (held-out pairs, evaluation only)."""
        if split not in SPLITS:
            raise ValueError(f"unknown shard split {split!r}: one of {SPLITS}")
        return self.cur(split)

    def shard_tar(self, shard_id: int, split: str = "shards") -> str:
        return f"{self.split_dir(split)}/{shard_name(shard_id)}.tar"

    def shard_index(self, shard_id: int, split: str = "shards") -> str:
        return f"{self.split_dir(split)}/{shard_name(shard_id)}.parquet"

    def shard_pattern(self, split: str = "shards") -> str:
        """The brace pattern of the shards present (:func:`shard_pattern`)."""
        return shard_pattern(self.split_dir(split))

    def shard_stats_of(self, split: str = "shards") -> str:
        return f"{self.split_dir(split)}/stats.json"

    @property
    def shard_stats(self) -> str:
        return self.shard_stats_of("shards")

    @property
    def shards_balance(self) -> tuple[str, str]:
        """(``shards/balance.parquet``, ``shards/balance.json``): :func:`balance_files` of the
        training shards (the held-out split has none)."""
        return balance_files(self.split_dir("shards"))

    @property
    def report_html(self) -> str:
        return self.cur("report.html")

    def report_asset(self, name: str) -> str:
        return self.cur("report", name)

    def report_link(self, uri: str) -> str:
        """``uri`` (a file of the curation dir) as a link relative to ``report.html``."""
        return posixpath.relpath(uri, self.curation) if uri.startswith(self.curation + "/") else uri


SCRATCH = ("dedup", "shardplan")  # curation scratch dirs (RunLayout.scratch)
