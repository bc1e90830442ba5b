"""The main job on a real 2-node Ray cluster on 127.0.0.1 with the run dir on the loopback S3
server: downloads, checks and shard writing spread over both nodes, and a node lost or a
download worker SIGKILLed mid-download changes nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import build_wit
from pipelines.demo.serve_images import serving

SCRIPT = Path(__file__).with_name("multinode_run.py")


@pytest.fixture(scope="module")
def slice_pool(tmp_path_factory, sample):
    """24 real sample rows whose URLs point at a fixed loopback port, and a query list."""
    root = tmp_path_factory.mktemp("multinode")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = pq.read_table(sample["sample_pool"]).to_pylist()
    rows = [r for r in rows if r["source"] == "emoji"][:12] + [r for r in rows if r["source"] != "emoji"][:12]
    for r in rows:
        r["url"] = f"http://127.0.0.1:{port}/{r['path']}"
    pq.write_table(pa.Table.from_pylist(rows), root / "pool.parquet")
    words = sorted({w for r in rows for w in r["text"].replace(",", " ").split() if w.isalpha()})
    pq.write_table(pa.table({"query_id": list(range(len(words))), "query": words}), root / "queries.parquet")
    return root / "pool.parquet", root / "queries.parquet", port


def _shards(out: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(f"{out}/curation/shards")
    return {Path(p).name: fs.cat_file(p) for p in sorted(fs.ls(root, detail=False)) if p.endswith(".tar")}


def _cluster_run(pool, queries, images, port, out, *extra) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(pool), str(queries), images, str(port), out, *extra],
                          capture_output=True, text=True, timeout=600)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(result[0][len("RESULT "):])


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_cluster_spreads_downloads_and_survives_lost_nodes_and_workers(slice_pool, sample, s3_bucket, tmp_path):
    pool, queries, port = slice_pool
    images = sample["sample_images_dir"]
    with serving(images, port=port):  # the reference: one process, img2dataset's multiprocessing
        build_wit.run(["--out", str(tmp_path / "local"), "--pool", str(pool), "--queries", str(queries),
                       "--runner", "beam", "--parts", "2", "--t", "100000", "--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1",
                       "--threads", "2", "--download-shard-size", "2", "--language", "", "--shard-size", "10", "--image-size", "64",
                       "--no-retry-pass", "--no-report", "--distributor", "multiprocessing", "--processes", "1"])
    reference = _shards(str(tmp_path / "local"))
    assert reference

    spread = _cluster_run(pool, queries, images, port, f"{s3_bucket}/spread")
    by_node = spread["stages"]["download"]["by_node"]
    assert set(by_node) == set(spread["nodes"]), by_node  # both nodes downloaded
    assert sum(by_node.values()) == spread["stages"]["download"]["out"]
    assert sum(spread["stages"]["imagecheck"]["by_node"].values()) == spread["stages"]["imagecheck"]["in"]
    assert sum(spread["stages"]["urlguard"]["by_node"].values()) == spread["stages"]["urlguard"]["in"]
    shards_by_node = spread["stages"]["shards"]["by_node"]  # the shard tasks spread too (dedup: tasks too)
    assert set(shards_by_node) == set(spread["nodes"]) and sum(shards_by_node.values()) == spread["stages"]["shards"]["out"]
    assert _shards(f"{s3_bucket}/spread") == reference

    lost = _cluster_run(pool, queries, images, port, f"{s3_bucket}/lost", "--kill-worker")
    assert lost["events"] and lost["events"][0]["removed"] == lost["nodes"][1]
    shards_total = -(-spread["stages"]["download"]["in"] // 2)
    assert lost["events"][0]["after_shards"] < shards_total  # removed while downloads still ran
    assert lost["stages"]["download"]["out"] == spread["stages"]["download"]["out"]
    assert _shards(f"{s3_bucket}/lost") == reference

    killed = _cluster_run(pool, queries, images, port, f"{s3_bucket}/killed", "--kill-download-worker")
    assert killed["events"] and "killed" in killed["events"][0]  # a download task's process died
    assert killed["stages"]["download"]["out"] == spread["stages"]["download"]["out"]
    assert _shards(f"{s3_bucket}/killed") == reference
