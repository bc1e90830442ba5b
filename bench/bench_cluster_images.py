"""The image stages (download + check + dedup + shards) on a 2-node Ray cluster on 127.0.0.1 vs
one node with the same CPUs, on the same real sample images: images/s and the ratio.

Each layout runs in its own process (a process holds one Ray connection): ``ray.cluster_utils
.Cluster`` with (a) one node of 2 CPUs, (b) two nodes of 1 CPU each, each node its own raylet;
the sample images served on 127.0.0.1; ``pipelines/wit_images.py``'s run (the per-part pipeline as Ray
tasks: a task per part, then one per download shard, fetched and checked; the dedup and shards
as Ray tasks) over a selection of N real (url, caption) rows. On a 2-core machine the point is that the work spreads over the
nodes (``by_node``) at no loss, not a speed-up. The shards of both layouts must be identical.

    python bench/bench_cluster_images.py [--rows 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_selection(curation: Path, rows: int, port: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.demo.sample_data import load_manifest

    pool = pq.read_table(load_manifest()["sample_pool"], columns=["uid", "path", "text", "source"]).to_pylist()[:rows]
    table = pa.table({"uid": [r["uid"] for r in pool],
                      "url": [f"http://127.0.0.1:{port}/{r['path']}" for r in pool],
                      "text": [r["text"] for r in pool],
                      "query_ids": pa.array([[0]] * len(pool), pa.list_(pa.int32())),
                      "source": [r["source"] for r in pool]})
    (curation / "selected").mkdir(parents=True)
    for p in range(2):
        pq.write_table(table.slice(p * -(-len(pool) // 2), -(-len(pool) // 2)), curation / "selected" / f"part-{p:05d}.parquet")


def child(layout: str, curation: str, port: int) -> None:
    """Start the cluster of ``layout`` (``1x2``: one node, 2 CPUs; ``2x1``: two nodes, 1 CPU each),
    run the image stages, print ``RESULT {json}``."""
    temp = tempfile.mkdtemp(prefix="ow-bc-")
    os.environ["RAY_TMPDIR"] = temp
    (Path(temp) / "ray").mkdir()
    from pipelines.runtime import configure_environment, ensure_auth_token

    configure_environment()
    ensure_auth_token()
    import argparse as ap

    import ray
    from ray.cluster_utils import Cluster

    from pipelines import wit_images
    from pipelines.demo.serve_images import serving
    from pipelines.demo.sample_data import load_manifest

    head_cpus = 2 if layout == "1x2" else 1
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False, "temp_dir": temp})
    if layout == "2x1":
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", dashboard_agent_listen_port=52367)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    parser = ap.ArgumentParser()
    wit_images.add_arguments(parser)
    args = parser.parse_args(["--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--threads", "32", "--download-shard-size", "250",
                              "--shard-size", "1000", "--no-retry-pass", "--no-report"])
    try:
        with serving(load_manifest()["sample_images_dir"], port=port):
            start = time.perf_counter()
            summary = wit_images.run(args, curation)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    stages = summary["stages"]
    print("RESULT " + json.dumps({"seconds": seconds, "in": stages["urlguard"]["in"],
                                  "counts": {s: [stages[s]["out"], stages[s].get("rejected")] for s in stages},
                                  "by_node": {s: stages[s].get("by_node") for s in ("download", "imagecheck", "shards")}}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(layout: str, rows: int, root: Path, port: int) -> dict:
    curation = root / layout / "curation"
    write_selection(curation, rows, port)
    proc = subprocess.run([sys.executable, __file__, "--child", layout, str(curation), str(port)],
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or not line:
        raise SystemExit(f"[bench_cluster_images] {layout} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(line[len("RESULT "):])
    tars = sorted((curation / "shards").glob("*.tar"))
    result["shards"] = hashlib.sha256(b"".join(t.read_bytes() for t in tars)).hexdigest()
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1], argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root:
        port = free_port()  # one port: the URLs (and so the shards' metadata) are the same
        one = run_layout("1x2", args.rows, Path(root), port)
        two = run_layout("2x1", args.rows, Path(root), port)
    if one["shards"] != two["shards"]:
        raise SystemExit("[bench_cluster_images] the two layouts wrote different shards: stage counts "
                         f"{json.dumps(one['counts'])} vs {json.dumps(two['counts'])}")
    for name, r in (("one node, 2 CPUs", one), ("two nodes, 1 CPU each", two)):
        print(f"[bench_cluster_images] {name}: {r['in'] / r['seconds']:.1f} images/s ({r['in']} rows, "
              f"{r['seconds']:.1f} s); rows per node: {json.dumps(r['by_node'])}")
    print(f"[bench_cluster_images] ratio two nodes / one node: {one['seconds'] / two['seconds']:.2f}x; "
          "shards identical: yes")


if __name__ == "__main__":
    main()
