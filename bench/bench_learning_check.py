"""Learning check: does pretraining learn? A ``tiny`` CLIP is trained for a few minutes on
2 CPU cores on captioned Fashion-MNIST *train* images (real WebDataset shards, 10 caption
wordings: pretrain.evalsets.FASHION_MNIST_CAPTIONS), then classifies the 10,000 *test* images
zero-shot with prompt templates it never saw in training (pretrain.zeroshot.FASHION_MNIST_TEMPLATES).
Chance is 10% top-1.

    .venv/bin/python bench/bench_learning_check.py [--steps 600] [--batch-size 128] [--out runs/learning_check]

It goes through the user-facing entry points: pipelines/pretrain.py (``--workers 0``: the same
training loop in this process; ``--workers 1`` or more runs it under Ray Train) and
pipelines/evaluate.py. Prints top-1 / top-5 / mean per-class recall and writes them with the
training time to OUT/learning_check.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import evaluate as evaluate_job  # noqa: E402
from pipelines import pretrain as pretrain_job  # noqa: E402
from pipelines.demo.sample_data import load_manifest  # noqa: E402
from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_fashion_mnist, write_captioned_shards  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="tiny CLIP on captioned Fashion-MNIST -> zero-shot test accuracy")
    p.add_argument("--out", default="runs/learning_check")
    p.add_argument("--train-images", type=int, default=30_000)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--data-workers", type=int, default=1)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    shards = out / "shards"
    # 1. captioned train images as WebDataset shards (png + txt), written once
    if not (shards / "00000.tar").exists():
        train = load_fashion_mnist(load_manifest()["fashion_mnist_dir"], "train")
        write_captioned_shards(train, shards, FASHION_MNIST_CAPTIONS, shard_size=2000,
                               limit=args.train_images, seed=0)
    last = len(list(shards.glob("*.tar"))) - 1
    pattern = str(shards / f"{{00000..{last:05d}}}.tar")
    # 2. pretrain through the job entry point
    start = time.perf_counter()
    summary = pretrain_job.run([
        "--train-data", pattern, "--model", "tiny", "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--out", str(out / "run"),
        "--lr", str(args.lr), "--warmup-steps", "50", "--log-every", "50",
        "--data-workers", str(args.data_workers), "--vocab-size", "1024", "--no-progress",
    ])
    train_s = time.perf_counter() - start
    # 3. zero-shot on the test split with unseen templates
    result = evaluate_job.run(["--checkpoint", summary["checkpoint"], "--dataset", "fashion-mnist",
                               "--out", str(out / "fashion-mnist.json")])
    report = {k: result[k] for k in ("top1", "top5", "mean_per_class_recall", "n")}
    report.update(train_seconds=round(train_s, 1), steps=args.steps, batch_size=args.batch_size,
                  train_images=args.train_images, final_loss=summary["metrics"]["loss"], chance_top1=0.1)
    (out / "learning_check.json").write_text(json.dumps(report, indent=2))
    print(f"learning check: tiny CLIP, {args.steps} steps x {args.batch_size} pairs in {train_s:.0f} s -> "
          f"Fashion-MNIST test zero-shot top-1 {report['top1']:.3f} (chance 0.100), top-5 {report['top5']:.3f}, "
          f"mean per-class recall {report['mean_per_class_recall']:.3f}, n={report['n']}")
    return report


if __name__ == "__main__":
    main()
