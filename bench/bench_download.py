"""Download + shard throughput (images/s) on loopback: openwit's image stages vs bare img2dataset.

Both fetch the same N sample images (openclipart + emoji, ``make sample-data``) from the same
in-process loopback server with the same img2dataset settings (processes, threads, image size,
shard size, webdataset output). Bare img2dataset decodes + resizes in its workers and writes
its shards; openwit runs urlguard → guarded img2dataset (bytes kept) → Pillow check/resize +
hashes on Ray Data → image dedup → final shards (report off). Ray is started before timing (the
job runs inside a Ray job). Prints the best of ``--repeat`` runs and the ratio (goal >= 0.9).

    python bench/bench_download.py [--n 3000] [--processes 2] [--threads 64] [--repeat 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.runtime import configure_environment  # noqa: E402


MAX_BENCH_PIXELS = 4_000_000  # the sample holds 20 larger PNGs (16 over 89 MP, one of 231 MP)


def selection(pool_path: str, images_dir: str, base: str, n: int):
    """n pool rows (emoji and openclipart alternating) with urls on ``base``, leaving out the
    images over :data:`MAX_BENCH_PIXELS`: bare img2dataset decodes those whole (a 231 MP PNG
    takes ~6 GB and minutes in one worker) while openwit refuses them from the header, so
    keeping them would measure that difference, not throughput."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # header reads only
    pool = pq.read_table(pool_path)
    small = [i for i, p in enumerate(pool.column("path").to_pylist())
             if Image.open(Path(images_dir) / p).size[0] * Image.open(Path(images_dir) / p).size[1] <= MAX_BENCH_PIXELS]
    order = sorted(small, key=lambda i: (pool.column("source")[i].as_py(), i))
    by_source = [[i for i in order if pool.column("source")[i].as_py() == s] for s in ("emoji", "openclipart")]
    interleaved = [i for pair in zip(*by_source) for i in pair][:n]
    rows = pool.take(pa.array(interleaved))
    urls = [f"{base}/{p}" for p in rows.column("path").to_pylist()]
    return pa.table({"uid": rows.column("uid"), "url": urls, "text": rows.column("text"),
                     "source": rows.column("source")})


def run_bare(rows, work: Path, args) -> float:
    """Bare img2dataset: download + resize + webdataset shards. Returns seconds."""
    import img2dataset
    import pyarrow.parquet as pq

    pq.write_table(rows.select(["uid", "url", "text"]), work / "urls.parquet")
    start = time.perf_counter()
    img2dataset.download(
        url_list=str(work / "urls.parquet"), input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=["uid"], output_format="webdataset", output_folder=str(work / "bare"),
        processes_count=args.processes, thread_count=args.threads, image_size=args.image_size,
        resize_mode="border", number_sample_per_shard=args.download_shard_size, extract_exif=False,
        compute_hash=None, timeout=10, distributor="multiprocessing",
    )
    return time.perf_counter() - start


def run_openwit(rows, work: Path, args) -> tuple[float, dict]:
    """openwit's image stages on the same rows. Returns (seconds, summary)."""
    import pyarrow.parquet as pq

    from pipelines import wit_images

    curation = work / "curation"
    (curation / "selected").mkdir(parents=True)
    pq.write_table(rows, curation / "selected" / "part-00000.parquet")
    parser = argparse.ArgumentParser()
    wit_images.add_arguments(parser)
    flags = parser.parse_args([
        "--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--processes", str(args.processes), "--threads", str(args.threads),
        "--image-size", str(args.image_size), "--download-shard-size", str(args.download_shard_size),
        "--shard-size", "10000", "--no-report",
    ])
    start = time.perf_counter()
    summary = wit_images.run(flags, str(curation))
    return time.perf_counter() - start, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="images (sample pool has ~7,500)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--download-shard-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    args = parser.parse_args(argv)
    configure_environment()
    from pipelines.runtime import init_ray
    from pipelines.demo.sample_data import load_manifest
    from pipelines.demo.serve_images import serving

    manifest = load_manifest()
    init_ray()
    bare_best = ours_best = float("inf")
    with serving(manifest["sample_images_dir"], port=0) as base:
        rows = selection(manifest["sample_pool"], manifest["sample_images_dir"], base, args.n)
        for attempt in range(args.repeat):
            for name in ("bare", "openwit"):
                work = Path(tempfile.mkdtemp(prefix=f"bench-dl-{name}-"))
                try:
                    if name == "bare":
                        seconds = run_bare(rows, work, args)
                        bare_best = min(bare_best, seconds)
                        print(f"[bench_download] run {attempt}: bare img2dataset {len(rows) / seconds:.1f} images/s "
                              f"({seconds:.1f} s)", flush=True)
                    else:
                        seconds, summary = run_openwit(rows, work, args)
                        ours_best = min(ours_best, seconds)
                        print(f"[bench_download] run {attempt}: openwit {len(rows) / seconds:.1f} images/s "
                              f"({seconds:.1f} s, {summary['shards']['samples']} samples in shards)", flush=True)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
    bare_rate, ours_rate = len(rows) / bare_best, len(rows) / ours_best
    print(f"[bench_download] {len(rows)} images, processes={args.processes} threads={args.threads} "
          f"image_size={args.image_size}, best of {args.repeat}")
    print(f"[bench_download] bare img2dataset: {bare_rate:.1f} images/s")
    print(f"[bench_download] openwit download+check+dedup+shards: {ours_rate:.1f} images/s")
    print(f"[bench_download] ratio openwit / bare img2dataset: {ours_rate / bare_rate:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
