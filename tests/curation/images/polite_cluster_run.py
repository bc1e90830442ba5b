"""The image stages on a 2-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``, 1 CPU
per node) fetching from two loopback hosts: 127.0.0.2 under the default ``--host-rate``
(turns from the run's limiter actor) and 127.0.0.3 with no limit. Prints ``RESULT {json}``:
each host's request times (as its server saw them) and the nodes that downloaded.

    python tests/curation/images/polite_cluster_run.py RUN_DIR

Run in its own process by test_images_politeness.py (a process holds one Ray connection).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pipelines.runtime import configure_environment, ensure_auth_token  # noqa: E402

LIMITED, FREE = "127.0.0.2", "127.0.0.3"
PER_PART = {LIMITED: 8, FREE: 16}  # URLs per selection part and host


class Logged(http.server.BaseHTTPRequestHandler):
    image = b""
    log: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 - the base class's name
        with Logged.lock:
            Logged.log.append((self.server.server_address[0], self.path, time.time()))
        if self.path == "/robots.txt":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(Logged.image)))
        self.end_headers()
        self.wfile.write(Logged.image)

    def log_message(self, format, *args):  # noqa: A002
        pass


def main() -> None:
    run_dir = sys.argv[1]
    temp = tempfile.mkdtemp(prefix="ow-pc-")
    os.environ["RAY_TMPDIR"] = temp
    (Path(temp) / "ray").mkdir()
    configure_environment()
    ensure_auth_token()
    import pyarrow as pa
    import ray
    from ray.cluster_utils import Cluster

    from curation.images.check import ImageCheckConfig
    from curation.images.download import DownloadConfig
    from curation.images.politeness import PolitenessConfig
    from curation.images.recipe import ImageStagesConfig
    from curation.images.shards import ShardConfig
    from curation.images.urlguard import UrlGuardConfig
    from pipelines import jobs
    from storage.layout import RunLayout
    from tests.curation.images.conftest import textured_png

    Logged.image = textured_png(3)
    first = http.server.ThreadingHTTPServer((LIMITED, 0), Logged)
    port = first.server_address[1]
    servers = [first, http.server.ThreadingHTTPServer((FREE, port), Logged)]
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    layout = RunLayout(run_dir)
    for p in range(2):
        urls = [f"http://{h}:{port}/p{p}/{i}.png" for h, n in PER_PART.items() for i in range(n)]
        layout.write_parquet(pa.table({"uid": [f"{p}-{i:03d}" for i in range(len(urls))], "url": urls,
                                       "text": ["a caption"] * len(urls)}), layout.part(p))
    config = ImageStagesConfig(
        guard=UrlGuardConfig(allow_networks=("127.0.0.0/8",)),
        download=DownloadConfig(threads=8, shard_size=4, retry_pass=False,
                                politeness=PolitenessConfig(host_rate=2, host_concurrency=2, unlimited_hosts=(FREE,))),
        check=ImageCheckConfig(image_size=64), shards=ShardConfig(shard_size=100), report=False)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "temp_dir": temp})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", dashboard_agent_listen_port=52367)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        summary = jobs.run_image_stages(layout.curation, config)
        nodes = sorted({layout.read_json(p)["node"] for p in layout.list(f"{layout.checked_dir}/_nodes", ".json")})
    finally:
        ray.shutdown()
        cluster.shutdown()
        for s in servers:
            s.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    print("RESULT " + json.dumps({"log": Logged.log, "download": summary["stages"]["download"],
                                  "hosts": summary["hosts"], "nodes": nodes}), flush=True)


if __name__ == "__main__":
    main()
