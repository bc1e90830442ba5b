"""The run's datasheet (curation/datasheet.py, pipelines/datasheet.py): its numbers are the stats
files' numbers, the publisher's answers are placeholders, a rerun writes the same bytes.

The run dir is written here, file by file through RunLayout, as the stages write it (no Ray, no
download): stage ledgers (safety stages included), the selection fingerprint with real pool files,
the query list, entry counts, shards' stats and index, a removed-links ledger, a takedown, a
contamination report and a web pool extracted from Common Crawl archives."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.datasheet import PLACEHOLDER, TO_FILL, build_datasheet, write_datasheet
from curation.stage import StageStats
from pipelines.datasheet import run as datasheet_cli
from storage.files import file_identity
from storage.layout import RunLayout

# (stage, in, {reason: n}, extras) in data-flow order; out = in - rejected
LEDGERS = [
    ("read", 1210, {}, {"files": 3, "files_skipped": {}}),
    ("text", 1210, {"not_english": 310, "text_too_short": 12}, {}),
    ("dedup_url", 888, {"duplicate_url": 8}, {}),
    ("dedup_text", 880, {"duplicate_text": 30}, {}),
    ("match", 850, {"no_match": 50}, {}),
    ("balance", 800, {"not_sampled": 300}, {}),
    ("urlguard", 500, {"loopback_address": 4, "opted_out": 6}, {"by_node": {"n1": 500}}),
    ("download", 490, {"http_404": 20, "robots_disallowed": 7, "x_robots_tag_optout": 3, "timeout": 10},
     {"by_node": {"n1": 490}, "largest_hosts": []}),
    ("hashlist", 450, {"hashlist_match": 2},
     {"lists": [{"name": "ncmec.txt", "kind": "md5", "entries": 1000, "sha256": "ab" * 32},
                {"name": "pdq.txt", "kind": "pdq", "entries": 50, "sha256": "cd" * 32}], "pdq_threshold": 31}),
    ("imagecheck", 448, {"corrupt_image": 8, "image_too_small": 5}, {"by_node": {"n1": 448}}),
    ("safety", 435, {"nsfw": 9},
     {"nsfw_threshold": 0.6, "nsfw_detector": "nudenet test", "scored": 435, "images_with_faces": 41,
      "faces": 57, "blurred": 57, "face_detector": "haar test", "by_node": {"n1": 435}}),
    ("imagededup", 426, {"exact_duplicate": 11, "near_duplicate": 15}, {"buckets": 2}),
    ("shards", 400, {}, {"heldout": 40, "order_buckets": 1}),
]
SAFETY_ONLY = {"hashlist", "safety"}
COUNTS = {0: 120, 1: 3, 2: 5, 3: 1, 5: 40, 7: 5, 8: 2, 9: 77, 11: 5, 12: 1}  # query_id: c_e
QUERIES = ["cat", "dog | wolf", "red car", "house", "tree", "bird", "sea", "sky", "boat", "sun", "moon", "star", "rain"]
REMOVED = [("hashlist", "ncmec.txt", "md5"), ("hashlist", "ncmec.txt", "md5"), ("hashlist", "pdq.txt", "pdq"),
           ("takedown", "request-1", "url")]
ARCHIVES = ["s3://commoncrawl/crawl-data/CC-MAIN-2023-50/segments/1/warc/"
            "CC-MAIN-20231128083443-20231128113443-00000.warc.gz",
            "s3://commoncrawl/crawl-data/CC-MAIN-2023-50/segments/1/warc/"
            "CC-MAIN-20231201000000-20231201030000-00001.warc.gz"]


def write_pool(directory: Path) -> list[str]:
    """Two readable pool files and a third the run read but that is gone now."""
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / "a.parquet", directory / "b.parquet"]
    pq.write_table(pa.table({"url": ["http://x/1.jpg"] * 700, "text": ["a cat"] * 700}), files[0])
    pq.write_table(pa.table({"url": ["http://x/2.jpg"] * 500, "text": ["a dog"] * 500}), files[1])
    return [str(f) for f in files] + [str(directory / "gone.parquet")]


def make_run(root: str, pool: list[str], *, safety: bool = True, extras: bool = True,
             t: float | None = None) -> RunLayout:
    """A finished run at ``root`` (``safety=False``: no safety ledgers; ``extras=False``: no
    takedown, removed links, report or web pool)."""
    layout = RunLayout(root)
    for stage, rows_in, rejected, extra in LEDGERS:
        if safety or stage not in SAFETY_ONLY:
            StageStats(stage, rows_in, rows_in - sum(rejected.values()), dict(rejected), dict(extra)).write(layout)
    identities = [file_identity(f) for f in pool[:2]] + [{"file": pool[2], "mtime": "1.0", "size": "10"}]
    settings = {"dedup_keys": ["url", "text"], "seed": 3, "t": t, "queries": layout.queries_parquet,
                "text": {"language": "en", "lid_model": None, "lid_threshold": 0.5, "max_chars": 1000, "min_chars": 2}}
    layout.write_json(layout.config_stamp, {"fingerprint": "f00dfeed", "config": {**settings, "pool": pool},
                                            "inputs": {"pool_files": identities, "queries_xxh3": "abc123",
                                                       "settings": settings}})
    for f, rows in zip(pool, (700, 500, 10)):
        layout.write_json(layout.read_tally(f), {"file": f, "rows": rows})
    layout.write_json(layout.summary, {"t": t or 4.0, "entries_selected": 9, "seconds": 1.5, "stages": {}})
    layout.write_json(layout.images_fingerprint, {
        "check": {"image_size": 256, "resize_mode": "border"}, "dedup": {"threshold": 4},
        "decontaminate": {"datasets": ["fashion-mnist"], "max_distance": 8},
        "respect": {"robots": True, "token": "openwit", "contact_url": "https://example.org/bot",
                    "opt_out_ledger": None},
        "disallowed_header_directives": ["noai", "noindex"]})
    layout.write_parquet(pa.table({"query_id": pa.array(list(COUNTS), pa.int32()),
                                   "count": pa.array(list(COUNTS.values()), pa.int64())}), layout.entry_counts)
    layout.write_parquet(pa.table({"query_id": pa.array(range(len(QUERIES)), pa.int64()), "query": QUERIES,
                                   "source": ["unigram"] * len(QUERIES)}), layout.queries_parquet)
    layout.write_json(layout.queries.stats, {"rows": len(QUERIES), "sources": {"unigram": len(QUERIES)},
                                             "dropped": {"unigram": {"below_min_count": 17}},
                                             "config": {"min_count": 100, "lowercase": True, "min_bigram_count": 3}})
    for split, samples in (("shards", 360), ("heldout", 40)):
        layout.write_json(layout.shard_stats_of(split),
                          {"samples": samples, "shards": 1, "bytes": 1234, "shard_size": 10000})
        layout.write_bytes(layout.shard_tar(0, split), b"")
        layout.write_parquet(pa.table({"key": ["00000_000000"], "uid": ["u"], "nsfw_score": [0.1]}),
                             layout.shard_index(0, split))
    if extras:
        write_extras(layout)
    return layout


def write_extras(layout: RunLayout) -> None:
    """Removed links, a takedown, a contamination report, a web pool from Common Crawl archives."""
    n = len(REMOVED)
    layout.write_parquet(pa.table({
        "uid": [f"u{i}" for i in range(n)], "url": [f"http://secret.example/{i}.jpg" for i in range(n)],
        "list": [r[1] for r in REMOVED], "kind": [r[2] for r in REMOVED],
        "hash": [hashlib.sha256(f"listed {i}".encode()).hexdigest() for i in range(n)],
        "distance": [0] * n, "source": [r[0] for r in REMOVED]}), layout.removed_part("p000000_00000"))
    layout.write_json(layout.stats("takedown"), {  # as curation/images/takedown.py writes it
        "stage": "takedown", "in": 3, "out": 2, "rejected": {"takedown_url": 1}, "removed": 1, "requests": [
            {"name": "request-1.txt", "bytes": 29, "sha256": "ab" * 32, "urls": 1, "hashes": 0, "removed": 1,
             "shards_rewritten": ["shards/00000.tar"]}]})
    report = layout.contamination_report
    report.write_json(report.results, {"fashion-mnist": {"n_all": 2000, "n_overlap": 33, "overlap_pct": 1.65,
                                                         "acc_all": 0.091, "acc_clean": 0.089, "acc_overlap": 0.212,
                                                         "delta_all_minus_clean": 0.002, "p_value": 0.024,
                                                         "ci_overlap": [0.05, 0.46], "threshold": 0.8,
                                                         "precision": 0.97, "recall": 0.98}})
    report.write_json(report.details, {"detector": "learned", "train_images": 360, "seconds": 12.0})
    pool = layout.pool
    for index, uri in enumerate(ARCHIVES):
        pool.write_json(pool.marker(index), {"file": uri, "kind": "warc", "config": {}})
    pool.write_json(pool.stats("webpool_records"), {"stage": "webpool_records", "in": 90, "out": 60,
                                                     "rejected": {"not_html": 25, "http_status": 5}})
    pool.write_json(pool.stats("webpool"), {"stage": "webpool", "in": 1400, "out": 1210,
                                             "rejected": {"no_alt": 150, "data_uri": 40}})


@pytest.fixture
def run_dir(tmp_path) -> RunLayout:
    return make_run(str(tmp_path / "run"), write_pool(tmp_path / "pool"))


def ledgers_on_disk(layout: RunLayout) -> dict[str, dict]:
    """Every stage ledger, read straight from the stats dir's files (not through the datasheet)."""
    found = {}
    for path in sorted(Path(layout.stats_dir).glob("*.json")):
        body = json.loads(path.read_text())
        if {"in", "out"} <= body.keys():
            found[path.stem] = body
    return found


def test_every_stage_count_is_the_ledgers(run_dir):
    json_path, md_path = write_datasheet(run_dir)
    sheet, md = json.loads(Path(json_path).read_text()), Path(md_path).read_text()
    on_disk = ledgers_on_disk(run_dir)
    assert [s["stage"] for s in sheet["stages"]][:6] == ["read", "text", "dedup_url", "dedup_text", "match", "balance"]
    assert {s["stage"] for s in sheet["stages"]} == set(on_disk)
    for stage in sheet["stages"]:
        ledger = on_disk[stage["stage"]]
        assert (stage["in"], stage["out"], stage["rejected"]) == (ledger["in"], ledger["out"], ledger["rejected"])
        reasons = ", ".join(f"{r}: {n:,}" for r, n in ledger["rejected"].items()) or "—"
        assert f"| {stage['stage']} | {ledger['in']:,} | {ledger['out']:,} | {reasons} |" in md
    pool = run_dir.pool
    for stage in sheet["sources"]["web_archives"]["stages"]:
        ledger = json.loads(Path(pool.stats(stage["stage"])).read_text())
        assert (stage["in"], stage["out"], stage["rejected"]) == (ledger["in"], ledger["out"], ledger["rejected"])
        assert f"| {stage['stage']} | {ledger['in']:,} | {ledger['out']:,} |" in md
    for split in ("shards", "heldout"):
        assert sheet["final"][split]["stats"] == json.loads(Path(run_dir.shard_stats_of(split)).read_text())
    assert "| training shards | 360 | 1 | 1,234 |" in md and "| held-out pairs | 40 | 1 | 1,234 |" in md


def test_safety_sections_come_from_their_ledgers(run_dir):
    sheet = build_datasheet(run_dir)
    md = (write_datasheet(run_dir), Path(run_dir.datasheet_md).read_text())[1]
    on_disk = ledgers_on_disk(run_dir)
    for stage in ("hashlist", "safety"):
        expected = {k: v for k, v in on_disk[stage].items() if k not in ("by_node", "stage")}
        assert sheet["safety"][stage] == {"run": True, **expected}
    assert sheet["safety"]["safetytext"] == {"run": False}
    assert "**Caption word list** (captions with a listed word are never fetched): **not run**" in md
    assert "2 removed; PDQ match within 31 bits" in md and "| ncmec.txt | md5 | 1,000 |" in md
    assert "57 in 41 images, 57 blurred" in md and "9 above the threshold 0.6" in md
    opt_outs = Counter()
    for stage in ("urlguard", "download"):
        opt_outs.update({r: n for r, n in on_disk[stage]["rejected"].items()
                         if r in ("opted_out", "robots_disallowed", "robots_unavailable", "x_robots_tag_optout")})
    assert sheet["safety"]["fetch"]["opt_outs"] == dict(opt_outs)
    assert f"Publisher opt-outs honoured: {sum(opt_outs.values())} " in md
    assert "| download | http_404 | 20 | no |" in md and "| urlguard | opted_out | 6 | yes |" in md
    removed = pq.read_table(run_dir.removed_part("p000000_00000"))
    by = Counter(zip(removed.column("source").to_pylist(), removed.column("list").to_pylist()))
    assert {(g["source"], g["list"]): g["rows"] for g in sheet["safety"]["removed_links"]["by_source_and_list"]} == by
    assert sheet["safety"]["removed_links"]["rows"] == removed.num_rows
    assert "| hashlist | ncmec.txt | 2 |" in md
    takedown = json.loads(Path(run_dir.stats("takedown")).read_text())
    assert sheet["safety"]["takedown"]["removed"] == takedown["removed"]
    assert sheet["safety"]["takedown"]["takedowns"] == [
        {"request": {"name": "request-1.txt", "sha256": "ab" * 32, "urls": 1, "hashes": 0},
         "removed": 1, "shards_rewritten": 1}]
    text = md + Path(run_dir.datasheet_json).read_text()
    leaked = removed.column("url").to_pylist() + removed.column("hash").to_pylist() + ["secret.example"]
    assert not [x for x in leaked if x in text]  # never a removed URL or hash


def test_the_publishers_answers_are_placeholders_never_filled(run_dir):
    sheet = build_datasheet(run_dir)
    write_datasheet(run_dir)
    md = Path(run_dir.datasheet_md).read_text()
    assert set(sheet["to_fill"]) == set(TO_FILL) >= {"license", "intended_uses", "out_of_scope_uses",
                                                     "takedown_contact", "funding", "creators"}
    for key, (section, question) in TO_FILL.items():
        assert sheet["to_fill"][key] == {"section": section, "question": question}
        assert f"{PLACEHOLDER} {question}" in md
        assert key not in {k for k in sheet if k != "to_fill"}
    for heading in ("1. Motivation", "2. Composition", "3. Collection process",
                    "4. Preprocessing / cleaning / labeling", "5. Uses", "6. Distribution", "7. Maintenance"):
        assert f"\n## {heading}\n" in md
    assert md.count(PLACEHOLDER) == len(TO_FILL) + 1  # one each, and once in the introduction


def test_concept_numbers_equal_an_independent_count(run_dir):
    concepts = build_datasheet(run_dir)["concepts"]
    t = json.loads(Path(run_dir.summary).read_text())["t"]
    total = sum(COUNTS.values())
    tail = {e: c for e, c in COUNTS.items() if c < t}
    top = sorted(COUNTS.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    assert concepts["t"] == t and concepts["matches"] == total and concepts["entries_matched"] == len(COUNTS)
    assert concepts["tail_entries"] == len(tail) and concepts["tail_matches"] == sum(tail.values())
    assert concepts["tail_share"] == pytest.approx(sum(tail.values()) / total)
    assert concepts["capped_entries"] == sum(c > t for c in COUNTS.values())
    assert concepts["at_t_entries"] == sum(c == t for c in COUNTS.values())
    assert concepts["entries_selected"] == 9
    assert [(e["query_id"], e["count"], e["query"], e["capped"]) for e in concepts["top"]] == \
        [(e, c, QUERIES[e], c > t) for e, c in top]
    write_datasheet(run_dir)
    md = Path(run_dir.datasheet_md).read_text()
    assert "| 2 | 9 | sun | unigram | 77 | yes |" in md and "dog \\| wolf" in md  # a pipe in an entry is escaped
    assert f"({sum(tail.values()) / total:.2%})" in md


def test_sources_and_settings(run_dir, tmp_path):
    sheet = build_datasheet(run_dir)
    pool = sheet["sources"]["pool_files"]
    for entry, path in zip(pool[:2], sorted((tmp_path / "pool").glob("*.parquet"))):
        assert entry["file"] == str(path) and entry["size"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p["rows_read"] for p in pool] == [700, 500, 10]
    assert pool[2]["sha256"] is None and pool[2]["sha256_note"].startswith("not readable")
    (tmp_path / "pool" / "a.parquet").write_bytes(b"changed after the run")
    assert build_datasheet(run_dir)["sources"]["pool_files"][0]["sha256_note"].startswith("changed since the run")
    assert build_datasheet(run_dir, digest_pool=False)["sources"]["pool_files"][1]["sha256"] is None
    archives = sheet["sources"]["web_archives"]
    assert archives["crawls"] == ["CC-MAIN-2023-50"] and len(archives["files"]) == 2
    assert archives["capture_window"] == {"first": "2023-11-28T08:34:43Z", "last": "2023-12-01T03:00:00Z"}
    queries = sheet["sources"]["query_list"]
    assert queries["built_in_this_run"] and queries["xxh3_128"] == "abc123"
    assert queries["stats"] == json.loads(Path(run_dir.queries.stats).read_text())
    settings = sheet["settings"]
    assert settings["selection"]["seed"] == 3 and settings["fingerprint"] == "f00dfeed"
    assert settings["t"]["value"] == 4.0 and settings["t"]["given"] is False
    assert settings["images"] == json.loads(Path(run_dir.images_fingerprint).read_text())
    report = sheet["eval_overlap"]["report"]
    results = json.loads(Path(run_dir.contamination_report.results).read_text())
    assert report["datasets"] == results and report["detector"] == "learned"


def test_a_given_t_is_reported_as_given(tmp_path):
    layout = make_run(str(tmp_path / "run"), write_pool(tmp_path / "pool"), extras=False, t=100.0)
    sheet = build_datasheet(layout)
    assert sheet["settings"]["t"] == {"value": 100.0, "given": True, "how": "given (--t 100)",
                                      "metaclip_tail_share": None}
    assert sheet["concepts"]["capped_entries"] == 1 and sheet["concepts"]["tail_entries"] == len(COUNTS) - 1


def test_a_rerun_writes_the_same_bytes(run_dir):
    first = [Path(p).read_bytes() for p in write_datasheet(run_dir)]
    second = [Path(p).read_bytes() for p in write_datasheet(run_dir)]
    assert first == second
    assert json.loads(first[0]) == build_datasheet(run_dir)


def test_absent_stages_and_reports_are_said_to_be_absent(tmp_path):
    layout = make_run(str(tmp_path / "run"), write_pool(tmp_path / "pool"), safety=False, extras=False)
    write_datasheet(layout)
    sheet = json.loads(Path(layout.datasheet_json).read_text())
    md = Path(layout.datasheet_md).read_text()
    assert all(sheet["safety"][s] == {"run": False} for s in ("safetytext", "hashlist", "safety"))
    assert sheet["safety"]["takedown"] == {"run": False}
    assert sheet["safety"]["removed_links"] == {"files": 0, "rows": 0, "by_source_and_list": []}
    assert "safetytext: not run, hashlist: not run, safety: not run" in md
    assert md.count("**not run** in this run.") == 3 and "the NSFW and face detectors were **not run**" in md
    assert sheet["eval_overlap"]["report"] is None and "No contamination report in this run dir" in md
    assert sheet["sources"]["web_archives"] is None and "crawl dates are not known from the run" in md
    assert "**Takedowns applied to this run:** none." in md


def test_a_run_on_an_object_store(tmp_path):
    layout = make_run(f"memory://datasheet-{uuid.uuid4().hex}/run", write_pool(tmp_path / "pool"))
    json_uri, md_uri = write_datasheet(layout)
    first = json.loads(layout.read_bytes(json_uri))["stages"][0]
    assert first == {"stage": "read", "in": 1210, "out": 1210, "rejected": {}}
    assert "curation/stats/read.json" in layout.read_bytes(md_uri).decode()


def test_the_cli_writes_and_errors_in_one_line(run_dir, tmp_path, capsys):
    assert datasheet_cli(["--out", run_dir.root]) == (run_dir.datasheet_json, run_dir.datasheet_md)
    assert capsys.readouterr().out.split() == [run_dir.datasheet_json, run_dir.datasheet_md]
    missing = str(tmp_path / "no-such-run")
    with pytest.raises(SystemExit) as err:
        datasheet_cli(["--out", missing])
    assert str(err.value) == f"datasheet: no run directory at {missing}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        datasheet_cli(["--out", str(tmp_path / "empty")])
    assert "no stage ledger" in str(err.value) and "\n" not in str(err.value)
