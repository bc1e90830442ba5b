"""Eval-overlap search and copy-detector cost (issue 10).

1. **search**: ``curation.overlap.nearest`` of E eval × T train L2-normalised embeddings
   (synthetic, 128-d, clustered like real embeddings: T/100 Gaussian centres; every 10th eval
   vector is a noisy copy of a train vector) → seconds on ``--threads`` faiss threads; anchor:
   faiss ``IndexFlatIP`` exhaustive search of the same (ratio = anchor / ours), and the share
   of planted copies whose nearest row is found (recall@1 of the copies, ours vs exhaustive).
2. **embedding**: ``pretrain.copydetect.embed_images`` images/s on one core (real sample images).
3. **training**: ``train_copy_detector`` on N real sample images (the test's settings) → seconds.

    python bench/bench_overlap.py [--eval 10000] [--train 1000000] [--threads 2] [--images 1200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def synthetic(n_eval: int, n_train: int, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eval, train, planted): unit rows; eval[planted] are noisy copies of train[planted_src]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n_train // 100), dim)).astype(np.float32)
    train = np.empty((n_train, dim), np.float32)
    for s in range(0, n_train, 100_000):
        k = min(100_000, n_train - s)
        train[s:s + k] = centres[rng.integers(0, len(centres), k)] + 0.5 * rng.standard_normal((k, dim), np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    evals = centres[rng.integers(0, len(centres), n_eval)] + 0.5 * rng.standard_normal((n_eval, dim), np.float32)
    planted = np.arange(0, n_eval, 10)
    src = rng.integers(0, n_train, len(planted))
    evals[planted] = train[src] + 0.02 * rng.standard_normal((len(planted), dim), np.float32)
    evals /= np.linalg.norm(evals, axis=1, keepdims=True)
    return evals, train, np.stack([planted, src], 1)


def bench_search(n_eval: int, n_train: int, threads: int) -> dict:
    import faiss

    from curation.overlap import SearchConfig, nearest

    faiss.omp_set_num_threads(threads)
    evals, train, planted = synthetic(n_eval, n_train)
    start = time.perf_counter()
    score, idx = nearest(evals, train, SearchConfig(threads=threads))
    ours = time.perf_counter() - start
    start = time.perf_counter()
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    _, flat_idx = index.search(evals, 1)
    flat = time.perf_counter() - start
    hit = lambda ids: float(np.mean(ids[planted[:, 0]] == planted[:, 1]))  # noqa: E731
    return {"eval": n_eval, "train": n_train, "threads": threads, "method": "ivf" if n_train > SearchConfig().flat_max_rows else "flat",
            "seconds": round(ours, 2), "flat_seconds": round(flat, 2), "ratio_flat_over_ours": round(flat / ours, 2),
            "copies_found": hit(idx), "copies_found_flat": hit(flat_idx[:, 0]),
            "agree_with_flat": float(np.mean(idx == flat_idx[:, 0]))}


def sample_images(n: int) -> list[np.ndarray]:
    import cv2
    from PIL import Image

    from pipelines.demo.sample_data import load_manifest
    from pretrain.copydetect import to_rgb_array

    root = Path(load_manifest()["sample_images_dir"])
    paths = sorted(root.glob("openclipart/**/*.png"))[:n // 2] + sorted(root.glob("emoji/*.png"))[:n - n // 2]
    return [cv2.resize(to_rgb_array(Image.open(p)), (128, 128), interpolation=cv2.INTER_AREA) for p in paths]


def bench_detector(n: int) -> dict:
    import torch

    from pretrain.copydetect import CopyDetectorConfig, embed_images, train_copy_detector

    torch.set_num_threads(1)
    images = sample_images(n)
    cfg = CopyDetectorConfig(image_size=32, epochs=25, seed=0)  # tests/overlap/test_copy_detection.py's
    model, summary = train_copy_detector(images, cfg)
    start = time.perf_counter()
    embed_images(model, images)
    embed = time.perf_counter() - start
    return {"train_images": len(images), "train_seconds": summary["seconds"], "train_steps": summary["steps"],
            "image_size": cfg.image_size, "embed_images_per_s_per_core": round(len(images) / embed, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval", type=int, default=10_000)
    p.add_argument("--train", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--skip-detector", action="store_true")
    a = p.parse_args(argv)
    result = {"search": bench_search(a.eval, a.train, a.threads)}
    print(json.dumps(result), flush=True)
    if not a.skip_detector:
        result["detector"] = bench_detector(a.images)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
