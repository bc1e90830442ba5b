"""Eval-overlap search and copy-detector cost (issue 10).

1. **search**: what the report does for the learned detector — each of E eval images is V query
   views (``query_crops``: 19), so ``contamination.overlap.nearest`` of E·V query rows × T train
   L2-normalised embeddings (synthetic, 128-d, clustered like real embeddings: T/100 Gaussian
   centres; every 10th eval image has one view that is a noisy copy of a train vector), then the
   best view per image → seconds on ``--threads`` faiss threads. Anchor: faiss ``IndexFlatIP``
   exhaustive search, timed on the first E rows (one view per image) and scaled by V (exhaustive
   search time is linear in the query count; the full E·V run would take ~20 minutes here):
   ratio = anchor / ours; and the share of planted copies found (recall@1, ours vs exhaustive on
   the views it searched).
2. **embedding**: ``contamination.copydetect.embed_images`` (training side) images/s on one core, and
   eval images/s through ``embed_queries`` (19 views each), real sample images, shipped config.
3. **training**: ``train_copy_detector`` with the shipped settings on N real sample images for
   ``--epochs`` → seconds per epoch (the shipped detector: ``summary`` in its weights file).

    python bench/bench_overlap.py [--eval 10000] [--train 1000000] [--views 19] [--threads 2] [--images 1200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def synthetic(n_eval: int, n_train: int, views: int, dim: int = 128,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eval views (E, V, D), train (T, D), planted (image, train row)): unit rows; view 0 of
    every 10th eval image is a noisy copy of a train row, its other views unrelated."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n_train // 100), dim)).astype(np.float32)
    train = np.empty((n_train, dim), np.float32)
    for s in range(0, n_train, 100_000):
        k = min(100_000, n_train - s)
        train[s:s + k] = centres[rng.integers(0, len(centres), k)] + 0.5 * rng.standard_normal((k, dim), np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    n = n_eval * views
    evals = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim), np.float32)
    evals = evals.reshape(n_eval, views, dim)
    planted = np.arange(0, n_eval, 10)
    src = rng.integers(0, n_train, len(planted))
    evals[planted, rng.integers(0, views, len(planted))] = train[src] + 0.02 * rng.standard_normal((len(planted), dim),
                                                                                                  np.float32)
    evals /= np.linalg.norm(evals, axis=2, keepdims=True)
    return evals, train, np.stack([planted, src], 1)


def bench_search(n_eval: int, n_train: int, views: int, threads: int) -> dict:
    import faiss

    from contamination.overlap import SearchConfig, nearest

    faiss.omp_set_num_threads(threads)
    evals, train, planted = synthetic(n_eval, n_train, views)
    start = time.perf_counter()
    score, idx = nearest(evals.reshape(-1, evals.shape[2]), train, SearchConfig(threads=threads))
    score, idx = score.reshape(n_eval, views), idx.reshape(n_eval, views)
    best = idx[np.arange(n_eval), score.argmax(1)]
    ours = time.perf_counter() - start
    planted_views = evals[planted[:, 0]].reshape(-1, evals.shape[2])  # exhaustive: the planted images' views
    start = time.perf_counter()
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    index.search(np.ascontiguousarray(evals[:, 0]), 1)  # the timed anchor: E rows, one per image
    flat_one_view = time.perf_counter() - start
    f_score, f_idx = index.search(planted_views, 1)
    f_best = f_idx.reshape(len(planted), views)[np.arange(len(planted)), f_score.reshape(len(planted), views).argmax(1)]
    flat = flat_one_view * views
    return {"eval": n_eval, "views": views, "query_rows": n_eval * views, "train": n_train, "threads": threads,
            "method": "ivf" if n_train > SearchConfig().flat_max_rows else "flat",
            "seconds": round(ours, 2), "flat_seconds_one_view": round(flat_one_view, 2),
            "flat_seconds_all_views_scaled": round(flat, 1), "ratio_flat_over_ours": round(flat / ours, 2),
            "copies_found": float(np.mean(best[planted[:, 0]] == planted[:, 1])),
            "copies_found_flat": float(np.mean(f_best == planted[:, 1]))}


def sample_images(n: int) -> list[np.ndarray]:
    import cv2
    from PIL import Image

    from contamination.copydetect import to_rgb_array
    from pipelines.demo.sample_data import load_manifest

    root = Path(load_manifest()["sample_images_dir"])
    paths = sorted(root.glob("openclipart/**/*.png"))[:n // 2] + sorted(root.glob("emoji/*.png"))[:n - n // 2]
    return [cv2.resize(to_rgb_array(Image.open(p)), (128, 128), interpolation=cv2.INTER_AREA) for p in paths]


def bench_detector(n: int, epochs: int) -> dict:
    import torch

    from contamination.copydetect import CopyDetectorConfig, embed_images, embed_queries, train_copy_detector

    torch.set_num_threads(1)
    images = sample_images(n)
    cfg = CopyDetectorConfig(epochs=epochs, lr=3e-3, seed=0)  # the shipped detector's settings, fewer epochs
    model, summary = train_copy_detector(images, cfg)
    start = time.perf_counter()
    embed_images(model, images)
    embed = time.perf_counter() - start
    start = time.perf_counter()
    embed_queries(model, images[:200])
    queries = time.perf_counter() - start
    return {"train_images": len(images), "epochs": epochs, "train_seconds": summary["seconds"],
            "train_seconds_per_epoch": round(summary["seconds"] / epochs, 1), "train_steps": summary["steps"],
            "image_size": cfg.image_size, "embed_images_per_s_per_core": round(len(images) / embed, 1),
            "eval_images_per_s_per_core_19_views": round(200 / queries, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval", type=int, default=10_000)
    p.add_argument("--train", type=int, default=1_000_000)
    p.add_argument("--views", type=int, default=19, help="query views per eval image (query_crops: 19)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--skip-detector", action="store_true")
    a = p.parse_args(argv)
    result = {"search": bench_search(a.eval, a.train, a.views, a.threads)}
    print(json.dumps(result), flush=True)
    if not a.skip_detector:
        result["detector"] = bench_detector(a.images, a.epochs)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
