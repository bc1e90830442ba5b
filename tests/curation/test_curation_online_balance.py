"""Online balancing (``build_wit.py --balance online``, MetaCLIP 2): the selection keeps every
matched pair, and the offline draw applied to it with nothing but ``balance.parquet`` and
``balance.json`` (as a training loader would) gives exactly an offline run's selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.text.balance import (
    EPOCH0_COLUMN,
    Balancer,
    balance_probabilities,
    draw_thresholds,
    entry_salts,
    entry_table,
    keep_rows,
    uid_hashes,
)
from curation.text.config import CurationConfig, prepare_run
from curation.text.selection import plan_parts
from curation.text.threshold import entry_thresholds
from pipelines import build_wit
from tests.curation.test_worldwide_match_balance import worldwide_pool_and_list


def _argv(pool, queries, out, *extra):
    return ["--pool", pool, "--queries", queries, "--out", str(out), "--until", "select", "--parts", "4", *extra]


def _selected(cur: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(cur.glob("selected/part-*.parquet"))])


def _files(cur: Path) -> dict[str, bytes]:
    paths = [*sorted(cur.glob("selected/part-*.parquet")), cur / "balance.parquet", cur / "balance.json"]
    return {p.name: p.read_bytes() for p in paths}


def redraw(rows: pa.Table, directory: Path) -> set[str]:
    """uids of ``rows`` that the offline draw keeps, from ``directory``'s balance.parquet and
    balance.json alone: p_e = t_e / max(c_e, t_e), u(uid, e, seed) < p_e for some matched entry."""
    meta = json.loads((directory / "balance.json").read_text())
    entries = pq.read_table(directory / "balance.parquet")
    probs = np.ones(meta["num_queries"])
    ids = entries.column("query_id").to_numpy()
    probs[ids] = balance_probabilities(entries.column("count").to_numpy(), entries.column("t").to_numpy())
    table = entry_table(entry_salts(np.arange(meta["num_queries"]), meta["seed"]), draw_thresholds(probs))
    keep = keep_rows(uid_hashes(rows.column("uid")), rows.column("query_ids").combine_chunks(), table)
    return set(rows.column("uid").filter(pa.array(keep)).to_pylist())


@pytest.mark.parametrize("settings", [("--t", "20", "--seed", "0"), ("--seed", "5")], ids=["t20", "t_scaled"])
def test_online_selection_is_the_matched_pool_and_redraws_the_offline_selection(pool_and_queries, tmp_path,
                                                                                 settings):
    pool, queries, _ = pool_and_queries
    offline = build_wit.run(_argv(pool, queries, tmp_path / "off", "--runner", "beam", *settings))
    online = build_wit.run(_argv(pool, queries, tmp_path / "on", "--runner", "beam", "--balance", "online",
                                 *settings))
    off, on = tmp_path / "off" / "curation", tmp_path / "on" / "curation"

    # every live matched row kept: no not_sampled, balance in == out == the match stage's out
    balance = online["stages"]["balance"]
    assert balance["rejected"] == {} and balance["in"] == balance["out"] == online["stages"]["match"]["out"]
    assert balance["mode"] == "online" and online["balance"] == "online" and offline["balance"] == "offline"
    assert not list(on.glob("rejects/balance/*.parquet"))
    assert {k: v for k, v in online["stages"].items() if k != "balance"} == \
        {k: v for k, v in offline["stages"].items() if k != "balance"}
    assert (on / "entry_counts.parquet").read_bytes() == (off / "entry_counts.parquet").read_bytes()
    rows = _selected(on)
    reached = set(_selected(off).column("uid").to_pylist()) | set(
        pq.read_table(off / "rejects" / "balance").column("uid").to_pylist())
    assert set(rows.column("uid").to_pylist()) == reached and rows.num_rows == balance["out"]

    # the key property: the offline draw over the online selection is the offline selection
    kept = set(_selected(off).column("uid").to_pylist())
    assert offline["stages"]["balance"]["rejected"]["not_sampled"] > 0
    assert redraw(rows, on) == kept
    meta = json.loads((on / "balance.json").read_text())
    assert meta == {"mode": "online", "seed": int(settings[-1]), "t": 20.0 if "--t" in settings else None,
                    "num_queries": pq.read_table(queries).num_rows, "matched_pairs": balance["in"],
                    "epoch0_pairs": len(kept)}
    assert balance["epoch0_pairs"] == online["epoch0_pairs"] == len(kept) == offline["selected"]
    assert (on / "balance.json").read_text() == json.dumps(meta, indent=2, sort_keys=True) + "\n"

    # balance.parquet: entry_counts.parquet's rows plus the draw's t per entry
    entries = pq.read_table(on / "balance.parquet")
    counts = pq.read_table(on / "entry_counts.parquet")
    assert entries.schema.names == ["query_id", "count", "t"]
    assert [f.type for f in entries.schema] == [pa.int32(), pa.int64(), pa.float64()]
    assert entries.select(["query_id", "count"]).equals(counts)
    assert entries.column("query_id").to_pylist() == sorted(entries.column("query_id").to_pylist())
    dense = np.zeros(meta["num_queries"], np.int64)
    dense[counts.column("query_id").to_numpy()] = counts.column("count").to_numpy()
    t = entry_thresholds(dense, meta["t"])
    assert entries.column("t").to_pylist() == [t] * entries.num_rows and t == online["t"] == offline["t"]

    # an offline run writes neither file; an online rerun rewrites nothing
    assert not list(off.glob("balance.*"))
    before = _files(on)
    build_wit.run(_argv(pool, queries, tmp_path / "on", "--runner", "beam", "--balance", "online", *settings))
    assert _files(on) == before


def test_another_seed_keeps_the_online_selection_and_changes_the_draw(pool_and_queries, tmp_path):
    pool, queries, _ = pool_and_queries
    out = tmp_path / "on"
    build_wit.run(_argv(pool, queries, out, "--runner", "beam", "--balance", "online", "--t", "20"))
    cur = out / "curation"
    parts = {k: v for k, v in _files(cur).items() if k.startswith("part-")}
    first = redraw(_selected(cur), cur)
    again = build_wit.run(_argv(pool, queries, out, "--runner", "beam", "--balance", "online", "--t", "20",
                                "--seed", "1"))
    assert {k: v for k, v in _files(cur).items() if k.startswith("part-")} == parts  # the same matched pool
    assert json.loads((cur / "balance.json").read_text())["seed"] == 1
    second = redraw(_selected(cur), cur)
    assert second != first and len(second) == again["epoch0_pairs"]


@pytest.mark.ray
def test_ray_online_equals_beam_byte_for_byte(pool_and_queries, tmp_path, ray_session):
    pool, queries, _ = pool_and_queries
    beam = build_wit.run(_argv(pool, queries, tmp_path / "beam", "--runner", "beam", "--balance", "online",
                               "--t", "20", "--batch-size", "128"))
    ray = build_wit.run(_argv(pool, queries, tmp_path / "ray", "--runner", "ray", "--balance", "online",
                              "--t", "20", "--batch-size", "256"))
    assert _files(tmp_path / "ray" / "curation") == _files(tmp_path / "beam" / "curation")
    assert ray["stages"] == beam["stages"] and ray["stages"]["balance"]["rejected"] == {}


def test_offline_default_keeps_the_recorded_config_and_fingerprint(pool_and_queries, tmp_path):
    """A config with the default ``balance`` records what runs made before the field did (no
    ``balance`` key), so they resume; online is recorded and fingerprinted."""
    pool, queries, _ = pool_and_queries
    base = CurationConfig(queries=queries, pool=(pool,), curation_dir=str(tmp_path / "off" / "curation"))
    assert "balance" not in base.fingerprint_parts()["settings"]
    prepare_run(base)
    assert "balance" not in json.loads((tmp_path / "off" / "curation" / "_config.json").read_text())["config"]
    online = CurationConfig(queries=queries, pool=(pool,), curation_dir=str(tmp_path / "off" / "curation"),
                            balance="online")
    assert online.fingerprint_parts()["settings"]["balance"] == "online"
    assert online.fingerprint() != base.fingerprint()
    with pytest.raises(ValueError, match="balance"):
        CurationConfig(queries=queries, pool=(pool,), curation_dir="out", balance="sometimes")
    with pytest.raises(SystemExit):
        build_wit.build_parser().parse_args(["--out", "x", "--balance", "sometimes"])


def test_online_balancer_keeps_every_row_and_records_the_offline_draw():
    rng = np.random.default_rng(4)
    ids = [sorted(set(rng.integers(0, 30, rng.integers(1, 4)).tolist())) for _ in range(3000)]
    table = pa.table({"uid": [f"u{i}" for i in range(3000)], "query_ids": pa.array(ids, pa.list_(pa.int32())),
                      "reject_reason": [""] * 2990 + ["duplicate_url"] * 10})
    counts = np.bincount([e for row in ids for e in row], minlength=30)
    offline = Balancer(counts, 40, seed=2)(table)
    online = Balancer(counts, 40, seed=2, online=True)(table)
    assert online.column("reject_reason").equals(table.column("reject_reason"))
    drawn = np.asarray(online.column(EPOCH0_COLUMN).to_pylist())[:2990]  # the live rows
    kept = np.asarray(offline.column("reject_reason").to_pylist())[:2990] == ""
    assert drawn.tolist() == kept.tolist() and 0 < drawn.sum() < 2990
    empty = Balancer(counts, 40, online=True)(table.slice(0, 0))
    assert empty.schema.field(EPOCH0_COLUMN).type == pa.bool_() and empty.num_rows == 0


def test_online_part_plan_sizes_parts_for_every_live_row():
    counts = np.full(100, 1_000, np.int64)
    offline = plan_parts(counts, np.array([50_000, 0]), 100, 1_000, 1)
    online = plan_parts(counts, np.array([50_000, 0]), 100, 1_000, 1, online=True)
    assert online["expected_selected_bound"] == counts.sum() and online["t"] == offline["t"] == 100.0
    assert online["num_parts"] > 50 > offline["num_parts"]


def test_balance_table_carries_each_languages_t(pool_and_queries, tmp_path):
    """A worldwide list: balance.parquet's t is each entry's language's t, the one the draw uses."""
    from curation.stage import StageStats
    from curation.text.config import write_balance_metadata

    pool, queries, _ = pool_and_queries
    config = CurationConfig(queries=queries, pool=(pool,), curation_dir=str(tmp_path / "curation"), balance="online",
                            seed=9)
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 400, 60) * (rng.random(60) < 0.8)
    languages = np.array(["en"] * 30 + ["es"] * 20 + ["th"] * 10, dtype=object)
    write_balance_metadata(config, counts, languages, StageStats("balance", 700, 700, {}, {"epoch0_pairs": 321}))
    entries = pq.read_table(tmp_path / "curation" / "balance.parquet")
    ids = np.flatnonzero(counts)
    assert entries.column("query_id").to_pylist() == ids.tolist()
    assert entries.column("count").to_pylist() == counts[ids].tolist()
    t = Balancer(counts, None, 9, languages).t
    assert entries.column("t").to_pylist() == t[ids].tolist() and len(set(t.tolist())) == 3
    assert json.loads((tmp_path / "curation" / "balance.json").read_text()) == {
        "mode": "online", "seed": 9, "t": None, "num_queries": 60, "matched_pairs": 700, "epoch0_pairs": 321}


def test_worldwide_online_selection_redraws_the_offline_selection_with_each_languages_t(tmp_path, sample):
    """A worldwide run (the real worldwide sample pool, a small en/es/fr/zh/ja list): online, the
    draw from balance.parquet's per-entry t (each language's own) over the matched pool is
    exactly the offline worldwide selection."""
    pool_path, queries, entries, _ = worldwide_pool_and_list(tmp_path, sample)
    runs = {}
    for mode in ("offline", "online"):
        runs[mode] = build_wit.run(_argv(pool_path, queries, tmp_path / mode, "--runner", "beam", "--languages", *entries,
                                         "--balance", mode))
    on = tmp_path / "online" / "curation"
    kept = set(_selected(tmp_path / "offline" / "curation").column("uid").to_pylist())
    assert redraw(_selected(on), on) == kept and runs["online"]["epoch0_pairs"] == len(kept)
    t = pq.read_table(on / "balance.parquet").column("t").to_numpy()
    by_language = runs["offline"]["by_language"]
    assert len(set(t)) == len({v["t"] for v in by_language.values()}) > 1  # each language's own t
