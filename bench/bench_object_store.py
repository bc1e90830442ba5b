"""The same run on a local directory and on an S3 API server (moto, 127.0.0.1): wall time of each
and the ratio S3 / local, with byte-identical shards asserted.

    .venv/bin/python bench/bench_object_store.py [--rows 200]

A slice of the real sample pool (emoji + clipart, served on 127.0.0.1), a query list built from
its captions, then ``build_wit`` (selection on Beam, the image stages with the check on Ray):
every stage reads and writes the run dir's filesystem, so the S3 run pays for each object PUT /
GET / LIST through s3fs and pyarrow. moto is an in-process Python server: a real object store
on a network is slower per request, faster per byte.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.runtime import configure_environment, init_ray  # noqa: E402


def start_moto() -> subprocess.Popen:
    """moto's S3 server on a free loopback port; the standard AWS_* variables point at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"], timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="pool rows (half emoji, half clipart)")
    args = parser.parse_args()
    configure_environment()
    moto = start_moto()  # before Ray starts, so its workers inherit the endpoint
    try:
        init_ray(num_cpus=2)
        import boto3
        import fsspec
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipelines import build_queries, build_wit
        from pipelines.demo.sample_data import load_manifest
        from pipelines.demo.serve_images import serving

        sample = load_manifest()
        boto3.client("s3").create_bucket(Bucket="openwit-bench")
        flags = ["--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--processes", "1", "--threads", "16", "--image-size", "128",
                 "--download-shard-size", "50", "--shard-size", "100", "--no-retry-pass"]
        times, shards = {}, {}
        with tempfile.TemporaryDirectory() as tmp, serving(sample["sample_images_dir"], port=0) as base:
            pool = pq.read_table(sample["sample_pool"]).to_pylist()
            half = args.rows // 2
            rows = [r for r in pool if r["source"] == "emoji"][:half] + [r for r in pool if r["source"] != "emoji"][:half]
            for r in rows:
                r["url"] = f"{base}/{r['path']}"
            buffer = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist(rows), buffer)
            captions = "\n".join(r["text"] for r in rows).encode()
            for name, root in (("local", tmp), ("s3", "s3://openwit-bench")):
                for uri, data in ((f"{root}/in/captions.txt", captions),
                                  (f"{root}/in/pool/part-0.parquet", buffer.getvalue().to_pybytes())):
                    with fsspec.open(uri, "wb") as f:
                        f.write(data)
                started = time.perf_counter()
                build_queries.run(["--out", f"{root}/run", "--text", f"{root}/in/captions.txt", "--min-count", "2",
                                   "--runner", "local", "--quiet"])
                summary = build_wit.run(["--out", f"{root}/run", "--pool", f"{root}/in/pool", "--runner", "beam",
                                         "--parts", "4", "--t", "100000", *flags])
                times[name] = time.perf_counter() - started
                fs, path = fsspec.core.url_to_fs(f"{root}/run/curation/shards")
                shards[name] = {Path(p).name: fs.cat_file(p) for p in fs.ls(path, detail=False) if p.endswith(".tar")}
                print(f"[{name}] {summary['images']['shards']['samples']} samples in {times[name]:.1f} s", flush=True)
        assert shards["s3"] == shards["local"] and shards["s3"], "S3 and local shards differ"
        print(f"rows={len(rows)}  local {times['local']:.1f} s  s3 {times['s3']:.1f} s  "
              f"ratio s3/local = {times['s3'] / times['local']:.2f}  (shards byte-identical)")
    finally:
        moto.terminate()


if __name__ == "__main__":
    main()
