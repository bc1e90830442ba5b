"""The release-safety checks' cost on CPU (issue 23): per image, per check, and their share of the
image half's time on a demo-sized selection.

    python bench/bench_safety.py [--images 600] [--rows 2000] [--skip-run]

1. Per image, one core (``cv2`` and onnxruntime on one thread, as a worker runs them), over
   ``--images`` real sample images (the sample pool's emoji and clip art, alternating) and
   scikit-image's eight bundled photographs, each decoded and scaled to the shard size (256)
   first, as the image check does: the image check itself (decode, guard, resize, hashes, JPEG;
   :func:`curation.images.check.check_image`), the three digests of the bytes (MD5 + SHA-1 +
   SHA-256), PDQ, NudeNet's NSFW score, the Haar face cascade, and the blur where faces were
   found. Median and mean milliseconds, and the safety checks' sum against the image check's
   own cost.
2. The image half (``pipelines/wit_images.py``, Ray on the local CPUs, one loopback image host,
   shard size 256 like the demo) on the first ``--rows`` rows of the sample pool, twice: the
   defaults (every check on) and ``--no-nsfw --no-faces`` (the digests and PDQ stay: they are
   always computed). Wall time of each; the share of the image half the detectors take is
   (on − off) / on, and the digests' and PDQ's share is estimated from part 1.

Prints one ``RESULT {json}`` line and the WIT-scale figure: core-hours per 400M images at the
measured per-image cost (goal: <= 50 core-ms per image, i.e. <= 5,600 core-hours per 400M).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_MS = 50.0  # core-ms of safety work per image (WIT: 400M images)
WIT_IMAGES = 400_000_000


def _ms(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values) * 1000, 3), "mean_ms": round(statistics.fmean(values) * 1000, 3),
            "n": len(values)}


def per_image(n_images: int) -> dict:
    """Part 1: the checks' cost per image on one core."""
    import cv2
    import pyarrow.parquet as pq
    import skimage.data
    from PIL import Image

    from curation.images.check import ImageCheckConfig, _decode, _scale, _to_bgr, check_image
    from curation.images.safety import FaceDetector, NsfwScorer, blur_boxes, digests, pdq_hash
    from storage.datadir import data_manifest

    cv2.setNumThreads(1)
    manifest = data_manifest()
    pool = pq.read_table(manifest["sample_pool"], columns=["path", "source"]).to_pylist()
    emoji = sorted({r["path"] for r in pool if r["source"] == "emoji"})
    clipart = sorted({r["path"] for r in pool if r["source"] == "openclipart"})
    picked = [p for pair in zip(emoji, clipart) for p in pair][:n_images]
    blobs = [Path(manifest["sample_images_dir"], p).read_bytes() for p in picked]
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                 "camera"):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    config = ImageCheckConfig()
    nsfw, faces = NsfwScorer(), FaceDetector()
    times: dict[str, list[float]] = {k: [] for k in ("image_check", "digests", "pdq", "nsfw", "faces", "blur")}
    with_faces = 0
    for data in blobs:
        started = time.perf_counter()
        if not isinstance(check_image(data, config), dict):
            continue
        times["image_check"].append(time.perf_counter() - started)
        scaled = _scale(_to_bgr(_decode(data, Image.open(io.BytesIO(data)))), config)
        for name, fn in (("digests", lambda: digests(data)), ("pdq", lambda: pdq_hash(scaled)),
                         ("nsfw", lambda: nsfw.score(scaled)), ("faces", lambda: faces.boxes(scaled))):
            started = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - started)
        if result:  # faces found: the blur's cost
            with_faces += 1
            started = time.perf_counter()
            blur_boxes(scaled, result)
            times["blur"].append(time.perf_counter() - started)
    out = {name: _ms(values) for name, values in times.items() if values}
    safety_mean = sum(out[k]["mean_ms"] for k in ("digests", "pdq", "nsfw", "faces"))
    safety_mean += out.get("blur", {"mean_ms": 0})["mean_ms"] * with_faces / len(times["image_check"])
    out["images"] = len(times["image_check"])
    out["images_with_faces"] = with_faces
    out["safety_mean_ms"] = round(safety_mean, 2)
    out["safety_vs_image_check"] = round(safety_mean / out["image_check"]["mean_ms"], 2)
    out["always_on_mean_ms"] = round(out["digests"]["mean_ms"] + out["pdq"]["mean_ms"], 3)
    return out


def child(curation: str, flags: list[str]) -> None:
    """The driver of part 2 (a child process): ``wit_images.py`` on ``curation``."""
    from pipelines import wit_images

    started = time.time()
    summary = wit_images.main(["--curation-dir", curation, "--allow-network", "127.0.0.0/8", "--unlimited-hosts",
                               "127.0.0.1", "--no-report", *flags])
    stages = {s: {k: v for k, v in b.items() if k in ("in", "out", "rejected", "scored", "images_with_faces")}
              for s, b in summary["stages"].items()}
    print("RESULT " + json.dumps({"wall_s": round(time.time() - started, 1), "stages": stages,
                                  "task_seconds": summary.get("task_seconds", {})}), flush=True)


def image_half(rows: int, flags: list[str], root: Path, port: int, label: str) -> dict:
    from bench.bench_scale import write_selection

    curation = root / label / "curation"
    write_selection(curation, rows, 1, port)
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="ow-sf-"))
    proc = subprocess.run([sys.executable, __file__, "--child", str(curation), *flags], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or not line:
        raise RuntimeError(f"driver failed ({proc.returncode}): {proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="sample images for the per-image costs")
    parser.add_argument("--rows", type=int, default=2000, help="selection rows of the image-half runs (the demo: 2,165)")
    parser.add_argument("--skip-run", action="store_true", help="only the per-image costs")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1:])
        return {}
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    result: dict = {"per_image": per_image(args.images), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    costs = result["per_image"]
    print(json.dumps(costs, indent=1))
    ms = costs["safety_mean_ms"]
    result["wit_core_hours_per_400M"] = round(ms / 1000 * WIT_IMAGES / 3600)
    result["goal_ratio"] = round(GOAL_MS / ms, 2)  # >= 1: within the goal
    if not args.skip_run:
        from bench.bench_scale import free_port, start_servers
        from storage.datadir import data_manifest

        port = free_port()
        servers = start_servers(data_manifest()["sample_images_dir"], 1, port)
        try:
            with tempfile.TemporaryDirectory(prefix="ow-bench-safety-") as tmp:
                on = image_half(args.rows, [], Path(tmp), port, "on")
                off = image_half(args.rows, ["--no-nsfw", "--no-faces"], Path(tmp), port, "off")
        finally:
            for s in servers:
                s.terminate()
        checked = on["stages"]["imagecheck"]["out"]
        always_on_s = costs["always_on_mean_ms"] / 1000 * on["stages"]["hashlist"]["in"] / os.cpu_count()
        result["image_half"] = {
            "rows": args.rows, "on_wall_s": on["wall_s"], "off_wall_s": off["wall_s"], "checked_images": checked,
            "detectors_share": round((on["wall_s"] - off["wall_s"]) / on["wall_s"], 3),
            "digests_pdq_share_estimated": round(always_on_s / on["wall_s"], 3),
            "safety_stage": on["stages"].get("safety"), "task_seconds_on": on["task_seconds"],
            "task_seconds_off": off["task_seconds"]}
    print(f"safety checks: {ms:.1f} core-ms per image (image check itself {costs['image_check']['mean_ms']:.1f} ms): "
          f"{result['wit_core_hours_per_400M']:,} core-hours per 400M images; goal {GOAL_MS:.0f} ms → ratio "
          f"{result['goal_ratio']:.2f}")
    if "image_half" in result:
        half = result["image_half"]
        print(f"image half, {args.rows} rows: {half['on_wall_s']} s with the detectors, {half['off_wall_s']} s without: "
              f"detectors {half['detectors_share']:.0%} of it, digests + PDQ ~{half['digests_pdq_share_estimated']:.0%}")
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
