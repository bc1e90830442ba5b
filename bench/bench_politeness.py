"""The cost of per-host politeness on the main job's download (issue 22): images/s with the
cluster-wide host turns off vs on, over many loopback hosts, and on a Zipf-skewed host mix.

    python bench/bench_politeness.py [--rows 4000] [--hosts 32] [--zipf-rows 1000] [--zipf-s 1.1]

Selection: real sample-pool captions and images (``make sample-data``) at distinct URLs spread
over ``--hosts`` loopback hosts 127.0.0.1..N (``bench_scale.write_selection``), all served by one server process (a
``pipelines.serve_images`` server per address, threads). Each run is the main job's image half
(``pipelines/wit_images.py``: guard, download with img2dataset's downloader, check, dedup,
shards; Ray on all local CPUs) in a child process:

- ``off``: every host in ``--unlimited-hosts`` (no turns asked: the job as before this issue);
- ``on, not binding``: ``--host-rate 1000 --host-concurrency 64``: every request takes its turn
  from the run's limiter actor, at limits the hosts never reach -- the overhead of the turns;
- ``on, default``: the shipped defaults (2 requests/s and 2 at once per host, cluster-wide);
- ``zipf, default``: ``--zipf-rows`` URLs with host k drawn with probability ~ k^-s: the
  largest host's ``min_seconds`` (its URLs / its rate, from ``stats/download.json``) against the
  stage's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_scale import free_port, write_selection  # noqa: E402


def serve(hosts: int, port: int, images: str) -> None:
    """Serve ``images`` on 127.0.0.1..``hosts``:``port`` until killed."""
    from pipelines.serve_images import make_server

    servers = [make_server(images, f"127.0.0.{h + 1}", port) for h in range(hosts)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[0].serve_forever()


def host_numbers(rows: int, hosts: int, zipf_s: float | None):
    """Each row's host 1..``hosts``: round robin, or drawn with probability ~ k^-``zipf_s``."""
    import numpy as np

    if zipf_s is None:
        return np.arange(rows) % hosts + 1
    weights = 1.0 / np.arange(1, hosts + 1) ** zipf_s
    return np.random.default_rng(0).choice(np.arange(1, hosts + 1), size=rows, p=weights / weights.sum())


def child(curation: str, flags: list[str]) -> None:
    from pipelines import wit_images

    started = time.time()
    summary = wit_images.main(["--curation-dir", curation, "--allow-network", "127.0.0.0/8", "--image-size", "64",
                               "--no-report", "--threads", "64", "--download-shard-size", "500", *flags])
    print("RESULT " + json.dumps({"wall_s": time.time() - started, "hosts": summary.get("hosts"),
                                  "download": summary["stages"]["download"]}), flush=True)


def run(root: Path, name: str, rows: int, hosts: int, port: int, zipf_s: float | None, flags: list[str]) -> dict:
    curation = root / name / "curation"
    write_selection(curation, rows, hosts, port, host_numbers(rows, hosts, zipf_s))
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="ow-bp-"))
    proc = subprocess.run([sys.executable, __file__, "--child", str(curation), "--", *flags], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or not line:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    download = result["download"]
    largest = download.get("largest_hosts", [{}])[0]
    out = {"run": name, "rows": rows, "images": download["out"], "wall_s": round(result["wall_s"], 1),
           "images_per_s": round(download["out"] / result["wall_s"], 1),
           "largest_host": largest.get("host"), "largest_host_urls": largest.get("urls"),
           "largest_host_min_s": largest.get("min_seconds"), "load_after": [round(x, 2) for x in os.getloadavg()]}
    print(f"[bench_politeness] {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--hosts", type=int, default=32)
    parser.add_argument("--zipf-rows", type=int, default=1000)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("flags", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pipelines.runtime import configure_environment

    configure_environment()
    if args.serve:
        return serve(int(args.serve[0]), int(args.serve[1]), args.serve[2])
    if args.child:
        return child(args.child, args.flags)
    from storage.datadir import data_manifest

    images = data_manifest()["sample_images_dir"]
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(args.hosts), str(port), images], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    root = Path(tempfile.mkdtemp(prefix="bench-politeness-"))
    all_hosts = [f"127.0.0.{h + 1}" for h in range(args.hosts)]
    results = []
    try:
        results.append(run(root, "off", args.rows, args.hosts, port, None, ["--unlimited-hosts", *all_hosts]))
        results.append(run(root, "on_not_binding", args.rows, args.hosts, port, None,
                           ["--host-rate", "1000", "--host-concurrency", "64"]))
        results.append(run(root, "on_default", args.rows, args.hosts, port, None, []))
        results.append(run(root, "zipf_default", args.zipf_rows, args.hosts, port, args.zipf_s, []))
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
    off = results[0]["images_per_s"]
    summary = {"hosts": args.hosts, "runs": results,
               "turn_overhead_ratio": round(results[1]["images_per_s"] / off, 3),
               "default_vs_off_ratio": round(results[2]["images_per_s"] / off, 3),
               "zipf_wall_over_largest_host_bound": round(results[3]["wall_s"] / results[3]["largest_host_min_s"], 2)}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
