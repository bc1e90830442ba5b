"""The main job's image half at scale: driver peak RSS, rows/s and per-stage time from a selection
of N rows, beside bare img2dataset on the same URLs and servers (issue 21).

    python bench/bench_scale.py [--rows 100000,300000,1000000] [--hosts 4] [--bare-rows 100000]

Selection: N rows in ``selection_parts(N)`` parts (the text half's row-sized parts: 8, or one
per 1M rows), each a real sample-pool caption and image (the 7,546 real images of ``make
sample-data``: 3,789 emoji of 136x128 px and 3,717 clip-art drawings of up to ~1,300 px, median
~145k pixels; ~24 KB on average) at a distinct URL
``http://127.0.0.<h>:<port>/<path>?n=<i>`` over ``--hosts`` loopback hosts. Each host is a
``pipelines/demo/serve_images.py`` process of its own (so the driver's RSS and CPU are the
pipeline's). Past the 7,546 images the URLs repeat images, so the dedup rejects most rows at
large N (every row is still downloaded, checked and hashed: the deployed path's work per row).

The driver is ``pipelines/wit_images.py`` in a child process (its own ``RUSAGE_SELF`` peak RSS,
Ray started by it on all local CPUs): the per-part pipeline (guard → download → check) as Ray
tasks, then dedup, shards. Per-stage wall time comes from when each stage's stats file was
written; task seconds are the tasks' own time in the stage summed over tasks.

Bare img2dataset: ``img2dataset.download`` on the same URLs (one parquet), the same servers,
``processes_count`` = local CPUs, the same threads and shard size, resizing to the same size in
its workers (webdataset output, multiprocessing distributor): its images/s is the anchor, and
ours is images fetched / the whole image half's wall (dedup and shards included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE_SIZE = 64
THREADS = 64
DOWNLOAD_SHARD = 1000
SHARD_SIZE = 10_000
MAX_PART_ROWS = 1_000_000  # the text half's default bound (curation.text.config)


def selection_parts(rows: int) -> int:
    return max(8, -(-rows // MAX_PART_ROWS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(images: str, hosts: int, port: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.demo.serve_images", "--dir", images,
                               "--host", f"127.0.0.{h + 1}", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for h in range(hosts)]
    deadline = time.time() + 30
    for h in range(hosts):
        while True:
            try:
                socket.create_connection((f"127.0.0.{h + 1}", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"image server 127.0.0.{h + 1}:{port} did not start")
                time.sleep(0.1)
    return procs


def server_cpu(servers: list[subprocess.Popen]) -> float:
    """CPU seconds the image-host processes used so far."""
    import psutil

    return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in servers)


def write_selection(curation: Path, rows: int, hosts: int, port: int, host_of_row=None) -> Path:
    """The selection parts + the same URLs as one parquet for bare img2dataset; returns it.
    ``host_of_row``: each row's host number 1..``hosts`` (default: round robin)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from storage.datadir import data_manifest

    pool = pq.read_table(data_manifest()["sample_pool"], columns=["path", "text", "source"])
    at = pa.array(np.arange(rows) % len(pool))
    index = pa.array(np.arange(rows)).cast(pa.string())
    host = pa.array(np.arange(rows) % hosts + 1 if host_of_row is None else host_of_row).cast(pa.string())
    urls = pc.binary_join_element_wise("http://127.0.0.", host, f":{port}/", pool.column("path").take(at),
                                       "?n=", index, "")
    query_ids = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32)),
                                         pa.array(np.arange(rows, dtype=np.int32) % 997))
    table = pa.table({"uid": pc.utf8_lpad(index, 32, "0"), "url": urls, "text": pool.column("text").take(at),
                      "query_ids": query_ids, "source": pool.column("source").take(at)})
    (curation / "selected").mkdir(parents=True)
    parts = selection_parts(rows)
    size = -(-rows // parts)
    for p in range(parts):
        pq.write_table(table.slice(p * size, size), curation / "selected" / f"part-{p:05d}.parquet")
    urls_file = curation.parent / "urls.parquet"
    pq.write_table(table.select(["url"]), urls_file)
    return urls_file


def child(curation: str) -> None:
    """The driver: ``wit_images.py`` on ``curation``; prints ``RESULT {json}`` with its own peak RSS."""
    from pipelines import wit_images

    started = time.time()
    hosts = [f"127.0.0.{h + 1}" for h in range(8)]  # the bench's own servers: no turns (bench_politeness.py)
    summary = wit_images.main(["--curation-dir", curation, "--allow-network", "127.0.0.0/8", "--unlimited-hosts", *hosts,
                               "--image-size", str(IMAGE_SIZE), "--no-report", "--threads", str(THREADS),
                               "--download-shard-size", str(DOWNLOAD_SHARD), "--shard-size", str(SHARD_SIZE)])
    wall = time.time() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stages = {s: {k: v for k, v in b.items() if k in ("in", "out")} for s, b in summary["stages"].items()}
    print("RESULT " + json.dumps({"wall_s": wall, "driver_peak_mib": peak_kib / 1024, "stages": stages,
                                  "task_seconds": summary.get("task_seconds", {})}), flush=True)


def stage_walls(curation: Path) -> dict:
    """Seconds from the run's fingerprint (written first) to each stage's stats file."""
    start = (curation / "images_fingerprint.json").stat().st_mtime
    out, previous = {}, start
    for stage in ("imagecheck", "imagededup", "shards"):
        at = (curation / "stats" / f"{stage}.json").stat().st_mtime
        out["guard+download+check" if stage == "imagecheck" else stage] = round(at - previous, 1)
        previous = at
    return out


def run_ours(root: Path, rows: int, hosts: int, port: int) -> tuple[dict, Path]:
    curation = root / f"n{rows}" / "curation"
    urls = write_selection(curation, rows, hosts, port)
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="ow-bs-"))
    proc = subprocess.run([sys.executable, __file__, "--child", str(curation)], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or not line:
        raise RuntimeError(f"driver failed ({proc.returncode}): {proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    result["stage_walls_s"] = stage_walls(curation)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    return result, urls


def run_bare(urls: Path, out: Path, rows: int, resize: bool) -> dict:
    """Bare img2dataset on the first ``rows`` of the same URLs: images/s. ``resize``: resizing
    in its workers to our size (its usual use); else fetch only (``disable_all_reencoding``:
    the bytes kept, no decode: an upper bound for the download alone)."""
    import img2dataset
    import pyarrow.parquet as pq

    subset = out.parent / f"{out.name}.urls.parquet"
    pq.write_table(pq.read_table(urls).slice(0, rows), subset)
    settings = dict(image_size=IMAGE_SIZE, resize_mode="border") if resize else dict(disable_all_reencoding=True)
    started = time.time()
    img2dataset.download(url_list=str(subset), output_folder=str(out), input_format="parquet", url_col="url",
                         output_format="webdataset", processes_count=os.cpu_count(), thread_count=THREADS,
                         number_sample_per_shard=DOWNLOAD_SHARD, timeout=10, retries=0,
                         distributor="multiprocessing", compute_hash=None, **settings)
    wall = time.time() - started
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return {"rows": rows, "resize": resize, "wall_s": round(wall, 1), "images": ok,
            "images_per_s": round(ok / wall, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,300000,1000000", help="comma list of selection sizes")
    parser.add_argument("--hosts", type=int, default=4, help="loopback image hosts 127.0.0.1..N")
    parser.add_argument("--bare-rows", type=int, default=100_000, help="run bare img2dataset at this N (0: never)")
    parser.add_argument("--bare-resize-rows", type=int, default=2_000,
                        help="rows of bare img2dataset with its resize (its resize runs ~10 images/s here)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    from pipelines.runtime import configure_environment

    configure_environment()  # the product's environment (also for bare img2dataset's workers)
    if args.child:
        child(args.child)
        return
    from storage.datadir import data_manifest

    images = data_manifest()["sample_images_dir"]
    port = free_port()
    servers = start_servers(images, args.hosts, port)
    root = Path(tempfile.mkdtemp(prefix="ow-bench-scale-"))
    results = {"machine": f"{os.cpu_count()} CPUs", "load_before": os.getloadavg(), "date": time.strftime("%F %T"),
               "hosts": args.hosts, "image_size": IMAGE_SIZE, "runs": []}
    try:
        for rows in [int(x) for x in args.rows.split(",")]:
            served = server_cpu(servers)
            ours, urls = run_ours(root, rows, args.hosts, port)
            ours["server_cpu_s"] = round(server_cpu(servers) - served, 1)  # the image hosts' share of the CPUs
            fetched = ours["stages"]["download"]["out"]
            ours.update(rows=rows, parts=selection_parts(rows), rows_per_s=round(rows / ours["wall_s"], 1),
                        images_per_s=round(fetched / ours["wall_s"], 1),
                        us_per_row=round(1e6 * ours["wall_s"] / rows, 1), load_after=os.getloadavg())
            ours["pipeline_cpu_ms_per_row"] = round(1000 * (os.cpu_count() * ours["wall_s"] - ours["server_cpu_s"])
                                                    / rows, 2)  # an upper bound: idle CPU counted too
            print(f"[bench_scale] N={rows:,}: {ours['wall_s']:.1f} s, {ours['rows_per_s']:,} rows/s, "
                  f"{ours['us_per_row']} us/row, driver peak {ours['driver_peak_mib']:.0f} MiB, "
                  f"stages {ours['stage_walls_s']}, task s {ours['task_seconds']}, image hosts' CPU {ours['server_cpu_s']} s "
                  f"(<= {ours['pipeline_cpu_ms_per_row']} CPU-ms per row for the pipeline)",
                  flush=True)
            if rows == args.bare_rows:
                ours["bare_img2dataset"] = []
                for resize, n in ((False, rows), (True, min(rows, args.bare_resize_rows))):
                    bare = run_bare(urls, root / f"bare{rows}{'r' if resize else ''}", n, resize)
                    ours["bare_img2dataset"].append(bare)
                    print(f"[bench_scale] bare img2dataset ({'resize' if resize else 'fetch only'}), first {n:,} "
                          f"URLs: {bare['images_per_s']} images/s; ours {ours['images_per_s']} images/s = "
                          f"{ours['images_per_s'] / bare['images_per_s']:.2f}x", flush=True)
            results["runs"].append(ours)
            shutil.rmtree(root / f"n{rows}", ignore_errors=True)
            for path in root.glob(f"bare{rows}*"):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
        runs = results["runs"]
        if len(runs) > 1:
            slope = (runs[-1]["driver_peak_mib"] - runs[0]["driver_peak_mib"]) / (runs[-1]["rows"] - runs[0]["rows"])
            spread = max(r["us_per_row"] for r in runs) / min(r["us_per_row"] for r in runs)
            print(f"[bench_scale] driver RSS slope {slope * 1024 * 1024:.1f} B/row "
                  f"({runs[0]['rows']:,} -> {runs[-1]['rows']:,}: {runs[0]['driver_peak_mib']:.0f} -> "
                  f"{runs[-1]['driver_peak_mib']:.0f} MiB; goal < 50 MB per 900k rows); "
                  f"time per row max/min {spread:.2f} (goal <= 1.10)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        for proc in servers:
            proc.terminate()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
