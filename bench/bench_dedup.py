"""Image dedup throughput per core: hashing real images, and the near-duplicate search.

1. **check + hash** (``curation.images.check.check_image``: decode, bomb check, resize to 256,
   pixel hash, pHash, JPEG encode) over real sample images, one process → images/s/core.
2. **dedup** (``curation.images.dedup.deduplicate``: exact + pHash multi-index hashing + greedy
   pass) over N 64-bit codes (10% near copies), faiss on one thread → images/s/core; anchor:
   the same range search with faiss's exhaustive ``IndexBinaryFlat`` (ratio = speed-up).
3. **distributed dedup** (``deduplicate_distributed``: the four rounds of tasks over files in a
   run dir, as the image stages run it) over the same codes cut into checked parts, in this
   process and as Ray tasks on a local Ray with all CPUs → seconds, ratio to the one-process
   dedup, and a check that the rejects are identical.

    python bench/bench_dedup.py [--images 400] [--codes 200000] [--threshold 4] [--repeat 3] [--parts 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_of(repeat: int, fn) -> float:
    """Smallest wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_hashing(n: int, repeat: int) -> float:
    """images/s/core of check_image over n real sample images (read into memory first)."""
    import pyarrow.parquet as pq

    from curation.images.check import ImageCheckConfig, check_image
    from pipelines.demo.sample_data import load_manifest

    manifest = load_manifest()
    pool = pq.read_table(manifest["sample_pool"]).to_pylist()
    picked = pool[:: max(1, len(pool) // n)][:n]
    blobs = [(Path(manifest["sample_images_dir"]) / r["path"]).read_bytes() for r in picked]
    config = ImageCheckConfig()
    seconds = best_of(repeat, lambda: [check_image(b, config) for b in blobs])
    return len(blobs) / seconds


def synthetic_codes(n: int, seed: int = 0):
    """n pHash-like codes: 90% random, 10% copies of others with 0-3 bits flipped."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    copies = rng.choice(n, n // 10, replace=False)
    sources = rng.integers(0, n, n // 10)
    bits = np.unpackbits(codes[sources], axis=1)
    for row in range(len(bits)):
        bits[row, rng.choice(64, rng.integers(0, 4), replace=False)] ^= 1
    codes[copies] = np.packbits(bits, axis=1)
    return pa.table({
        "uid": [f"{i:012d}" for i in range(n)],
        "pixel_hash": pa.array([i.to_bytes(16, "big") for i in range(n)], pa.binary(16)),
        "phash": pa.array([c.tobytes() for c in codes], pa.binary(8)),
    }), codes


def bench_distributed(table, config, parts: int, expected) -> dict[str, float]:
    """Seconds of the distributed dedup over ``table`` cut into ``parts`` parquet parts in a
    temp run dir: in this process, then as Ray tasks; each result checked against ``expected``."""
    import tempfile

    from curation.images.dedup import deduplicate_distributed
    from curation.stage import in_process
    from pipelines.runtime import configure_environment, init_ray
    from pipelines.wit_images import ray_map_tasks
    from storage.layout import RunLayout

    def rejects(layout):
        got = layout.read_parquets(layout.list(layout.rejects_dir("imagededup"), ".parquet"),
                                   ["uid", "reason", "duplicate_of"])
        return sorted(zip(*(got.column(c).to_pylist() for c in ("uid", "reason", "duplicate_of"))))

    want = sorted(zip(*(expected.column(c).to_pylist() for c in ("uid", "reason", "duplicate_of"))))
    configure_environment()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as root:
        layout = RunLayout(root)
        step = -(-len(table) // parts)
        uris = []
        for i in range(parts):
            uris.append(layout.checked_part(f"pass0_{i:05d}"))
            layout.write_parquet(table.slice(i * step, step), uris[-1])
        for name, engine in (("in one process", in_process), ("Ray tasks, local Ray", ray_map_tasks)):
            if engine is ray_map_tasks:
                init_ray()
            start = time.perf_counter()
            deduplicate_distributed(layout, uris, config, engine)
            results[name] = time.perf_counter() - start
            if rejects(layout) != want:
                raise SystemExit(f"[bench_dedup] distributed dedup ({name}) differs from the one-process dedup")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="real images hashed")
    parser.add_argument("--codes", type=int, default=200_000, help="codes deduplicated")
    parser.add_argument("--threshold", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", type=int, default=20, help="checked parts the distributed dedup reads")
    args = parser.parse_args(argv)
    from pipelines.runtime import configure_environment

    configure_environment()  # offline: before anything imports img2dataset / albumentations
    import faiss

    from curation.images.dedup import ImageDedupConfig, deduplicate

    faiss.omp_set_num_threads(1)
    hash_rate = bench_hashing(args.images, args.repeat)
    table, codes = synthetic_codes(args.codes)
    config = ImageDedupConfig(threshold=args.threshold)
    dedup_seconds = best_of(args.repeat, lambda: deduplicate(table, config))
    kept, rejected = deduplicate(table, config)

    def flat_search():
        index = faiss.IndexBinaryFlat(64)
        index.add(codes)
        index.range_search(codes, args.threshold + 1)

    flat_seconds = best_of(1, flat_search)
    distributed = bench_distributed(table, config, args.parts, rejected)
    print(f"[bench_dedup] check+hash (decode, bomb check, resize 256, pixel hash, pHash, JPEG): "
          f"{hash_rate:.1f} images/s/core over {args.images} real sample images, best of {args.repeat}")
    print(f"[bench_dedup] dedup of {args.codes} codes (threshold {args.threshold}): "
          f"{args.codes / dedup_seconds:,.0f} images/s/core ({dedup_seconds:.2f} s; "
          f"{len(kept)} kept, {len(rejected)} duplicates), best of {args.repeat}")
    print(f"[bench_dedup] anchor: exhaustive IndexBinaryFlat range search alone {flat_seconds:.2f} s; "
          f"ratio full dedup vs exhaustive search: {flat_seconds / dedup_seconds:.1f}x faster")
    for name, seconds in distributed.items():
        print(f"[bench_dedup] distributed dedup ({name}, {args.parts} checked parts): {seconds:.2f} s, "
              f"{args.codes / seconds:,.0f} images/s; ratio to the one-process dedup: "
              f"{dedup_seconds / seconds:.2f}x; rejects identical: yes")


if __name__ == "__main__":
    main()
