"""Online balancing through the image half: ``balance.parquet`` and ``balance.json`` land beside the
training shards (never the held-out ones), survive a rerun, leave with an offline selection, and the
shard samples carry the uid and query_ids a loader's draw needs."""

from __future__ import annotations

import json
import socket
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.images.check import ImageCheckConfig
from curation.images.download import DownloadConfig
from curation.images.politeness import PolitenessConfig
from curation.images.recipe import ImageStagesConfig, run_image_stages, shard_stage
from curation.images.shards import ShardConfig, publish_balance
from curation.images.urlguard import UrlGuardConfig
from curation.stage import in_process, pipelined_in_process
from pipelines import build_wit
from pipelines.serve_images import serving
from storage.layout import RunLayout, balance_files, expand_shards
from tests.curation.images.test_images_shards import samples
from tests.curation.test_curation_online_balance import redraw


def _json_members(tar_path) -> list[dict]:
    with tarfile.open(tar_path) as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]


def test_shard_stage_publishes_the_balance_files_beside_the_training_shards(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    table = samples(23)
    parts = [layout.checked_part("pass0_00000"), layout.checked_part("pass0_00001")]
    layout.write_parquet(table.slice(0, 11), parts[0])
    layout.write_parquet(table.slice(11), parts[1])
    entries = pa.table({"query_id": pa.array([3, 5], pa.int32()), "count": pa.array([40, 2], pa.int64()),
                        "t": pa.array([4.0, 4.0])})
    layout.write_parquet(entries, layout.balance_table)
    layout.write_json(layout.balance_meta, {"mode": "online", "seed": 0, "t": 4.0, "num_queries": 23,
                                            "matched_pairs": 23, "epoch0_pairs": 9})
    config = ShardConfig(shard_size=5, holdout_fraction=0.3)
    shard_stage(layout, parts, config, in_process, dedup_out=23)

    shards = layout.split_dir("shards")
    assert layout.shards_balance == balance_files(shards)
    for source, target in zip((layout.balance_table, layout.balance_meta), layout.shards_balance):
        assert layout.read_bytes(target) == layout.read_bytes(source)
    assert not [u for u in layout.list(layout.split_dir("heldout")) if "balance" in u]
    assert all(p.rsplit("/", 1)[-1][:5].isdigit() for p in expand_shards(shards))  # only the tars
    members = [m for tar in expand_shards(shards) for m in _json_members(tar)]
    assert members and all({"uid", "query_ids"} <= m.keys() for m in members)
    assert publish_balance(layout) == []  # a rerun rewrites nothing

    layout.remove(layout.balance_table)  # an offline selection: none beside its shards
    layout.remove(layout.balance_meta)
    shard_stage(layout, parts, config, in_process, dedup_out=23)
    assert not any(layout.exists(u) for u in layout.shards_balance)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def online_selection(tmp_path_factory, sample):
    """The text half online (Beam) on 80 real sample pairs whose URLs name a free loopback port:
    (run dir, port, summary). Module-scoped, so it runs before the socket guard: Beam's
    DirectRunner first looks for its Prism binary online (and falls back when it cannot)."""
    root = tmp_path_factory.mktemp("online")
    port = _free_port()
    pool = pq.read_table(sample["sample_pool"], columns=["uid", "url", "text", "source"]).slice(0, 80)
    pool = pool.set_column(1, "url", pc.replace_substring(pool.column("url"), "127.0.0.1:18765", f"127.0.0.1:{port}"))
    pq.write_table(pool, root / "pool.parquet")
    words = sorted({w for t in pool.column("text").to_pylist() for w in t.split(" ") if w.isalpha() and len(w) > 3})
    pq.write_table(pa.table({"query_id": list(range(len(words))), "query": words}), root / "queries.parquet")
    out = root / "run"
    summary = build_wit.run(["--pool", str(root / "pool.parquet"), "--queries", str(root / "queries.parquet"),
                             "--out", str(out), "--until", "select", "--runner", "beam", "--balance", "online",
                             "--t", "2", "--parts", "2"])
    return out, port, summary


def test_online_run_to_the_shards(online_selection, sample):
    """The image half in this process after an online text half: the shard directory holds the
    run's balance files, and the offline draw over the shard samples (from those files and the
    samples' json alone) keeps exactly the downloaded share of epoch 0."""
    out, port, summary = online_selection
    assert summary["stages"]["balance"]["rejected"] == {} and 0 < summary["epoch0_pairs"] < summary["selected"]
    layout = RunLayout(str(out))
    config = ImageStagesConfig(
        guard=UrlGuardConfig(allow_networks=("127.0.0.1",)),
        download=DownloadConfig(processes=1, threads=8, distributor="multiprocessing",
                                politeness=PolitenessConfig(unlimited_hosts=("127.0.0.1",))),
        check=ImageCheckConfig(image_size=64), shards=ShardConfig(shard_size=16))
    with serving(sample["sample_images_dir"], port=port):
        run_image_stages(layout, config, pipelined_in_process, map_tasks=in_process)

    shards = out / "curation" / "shards"
    assert (shards / "balance.parquet").read_bytes() == (out / "curation" / "balance.parquet").read_bytes()
    assert (shards / "balance.json").read_bytes() == (out / "curation" / "balance.json").read_bytes()
    loaded = [json.loads(s["json"]) for s in wds.WebDataset(layout.shard_pattern(), shardshuffle=False)]
    assert len(loaded) == layout.read_json(layout.shard_stats)["samples"] > 10
    rows = pa.table({"uid": [m["uid"] for m in loaded],
                     "query_ids": pa.array([m["query_ids"] for m in loaded], pa.list_(pa.int32()))})
    selected = pa.concat_tables([pq.read_table(p) for p in sorted((out / "curation").glob("selected/part-*.parquet"))])
    epoch0 = redraw(selected, shards)
    assert len(epoch0) == summary["epoch0_pairs"]
    drawn = redraw(rows, shards)
    assert drawn == epoch0 & set(rows.column("uid").to_pylist()) and 0 < len(drawn) < rows.num_rows
    # the training loader (--balance online) on these shards: its data epoch 0 is exactly that draw
    from pretrain.data import make_train_pipeline
    from pretrain.tokenizer import CaptionTokenizer

    pipeline = make_train_pipeline(layout.shard_pattern(), CaptionTokenizer.train(["a caption"], vocab_size=300), 32, 4,
                                   resample=False, shuffle_buffer=8, balance="online")
    loaded_epoch0 = set()
    for sample in pipeline.pipeline[0]:  # the raw stream: each sample tagged with its data epoch
        if sample["__epoch__"] > 1:
            break
        if sample["__epoch__"] == 0:
            loaded_epoch0.add(json.loads(sample["json"])["uid"])
    assert loaded_epoch0 == drawn
    sheet = (out / "datasheet.md").read_text()
    assert "online (MetaCLIP 2)" in sheet and f"epoch 0, the offline draw: {summary['epoch0_pairs']}" in sheet
    assert "online balancing, training draws" in (out / "curation" / "report.html").read_text()
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    run_image_stages(layout, config, pipelined_in_process, map_tasks=in_process)  # finished: skipped
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before
