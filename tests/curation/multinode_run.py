"""Run ``build_wit`` on a 2-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``, each node
its own raylet and 1 CPU) with the run dir on the S3 server named by the ``AWS_*`` environment;
optionally remove the worker node while its downloads run, or SIGKILL a worker process in the
middle of a download task. Prints ``RESULT {json}``.

    python tests/curation/multinode_run.py POOL QUERIES IMAGES_DIR PORT OUT_URI [--kill-worker]
        [--kill-download-worker]

POOL's URLs point at 127.0.0.1:PORT, where IMAGES_DIR is served (slowly) during the run.

Run in its own process by test_curation_multinode.py: a process holds one Ray connection, and
the test session already has its own local Ray.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.runtime import configure_environment, ensure_auth_token  # noqa: E402


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the sample images, 0.15 s per request: downloads last long enough to lose a node."""

    def do_GET(self):  # noqa: N802 - the base class's name
        time.sleep(0.15)
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002
        pass


def remove_worker_when_busy(cluster, worker, checked_dir: str, stop: threading.Event, log: list) -> None:
    """Remove ``worker`` as soon as it has finished one download shard (so it is mid-run)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(checked_dir)
    while not stop.is_set():
        try:
            records = [json.loads(fs.cat_file(p)) for p in fs.glob(f"{path}/_nodes/*.json")]
        except (FileNotFoundError, OSError):
            records = []
        if any(r["node"] == worker.node_id for r in records):
            cluster.remove_node(worker, allow_graceful=False)
            log.append({"removed": worker.node_id, "after_shards": len(records)})
            return
        fs.invalidate_cache()
        time.sleep(0.1)


def kill_a_download_worker(stop: threading.Event, log: list) -> None:
    """SIGKILL the first Ray worker process seen running a download task (fetch + check)."""
    import psutil

    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if cmdline.startswith("ray::download_shard"):
                os.kill(proc.info["pid"], signal.SIGKILL)
                log.append({"killed": proc.info["pid"]})
                return
        time.sleep(0.05)


def main() -> None:
    pool, queries, images, port, out = sys.argv[1:6]
    kill = "--kill-worker" in sys.argv
    kill_task = "--kill-download-worker" in sys.argv
    temp = tempfile.mkdtemp(prefix="ow-mn-")  # this cluster's own temp dir (short: socket paths)
    os.environ["RAY_TMPDIR"] = temp
    (Path(temp) / "ray").mkdir()
    configure_environment()
    ensure_auth_token()
    import ray
    from ray.cluster_utils import Cluster

    from pipelines import build_wit
    from pipelines.demo.serve_images import serving

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "temp_dir": temp})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", dashboard_agent_listen_port=52366)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    nodes = [cluster.head_node.node_id, worker.node_id]
    events: list = []
    stop = threading.Event()
    try:
        with serving(images, port=int(port), handler=SlowHandler):
            if kill:
                watcher = threading.Thread(target=remove_worker_when_busy, daemon=True, args=(
                    cluster, worker, f"{out}/curation/checked", stop, events))
                watcher.start()
            if kill_task:
                threading.Thread(target=kill_a_download_worker, daemon=True, args=(stop, events)).start()
            summary = build_wit.run([
                "--out", out, "--pool", pool, "--queries", queries, "--runner", "beam", "--parts", "2", "--t", "100000",
                "--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--threads", "2", "--download-shard-size", "2", "--language", "",
                "--shard-size", "10", "--image-size", "64", "--no-retry-pass", "--no-report"])
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    print("RESULT " + json.dumps({"stages": summary["images"]["stages"], "events": events,
                                  "nodes": nodes}), flush=True)


if __name__ == "__main__":
    main()
