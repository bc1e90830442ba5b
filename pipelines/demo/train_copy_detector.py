"""Train the learned copy detector (``contamination.copydetect``) on the sample data's copy-detection
images and save it: the detector shipped as ``contamination/assets/copy_detector.pt``, which
``contamination_report.py --detector-weights`` (and ``make demo``) reuse.

    python -m pipelines.demo.train_copy_detector [--out contamination/assets/copy_detector.pt] [--epochs 60]

Training set (``pipelines.demo.copy_detection_set``): 1,000 mutually distinct openclipart/emoji
images and 3,000 Fashion-MNIST train images; never the held-out eval originals the test measures
on, nor any Fashion-MNIST test image. Without the sample data: ``make sample-data`` first.
A report can instead train its own detector on its training shards (no ``--detector-weights``):
that is the product's way; this script is the demo tooling that made the shipped weights.
The shipped file is this script's output with its defaults (60 epochs of batches of 128, 64 px,
width 16: 2,247 s = 37 minutes on the 2-core VM, partly beside other jobs).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import argparse
import json

from pipelines.runtime import configure_environment


def run(argv: list[str] | None = None) -> dict:
    """Parse, train, save; return the training summary."""
    import torch

    from contamination.copydetect import SHIPPED_WEIGHTS, CopyDetectorConfig, save_copy_detector, train_copy_detector
    from pipelines.demo.copy_detection_set import FASHION_TRAIN, detector_training_images
    from pipelines.demo.sample_data import load_manifest

    d = CopyDetectorConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(SHIPPED_WEIGHTS), help="weights file to write")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0 = all epochs)")
    p.add_argument("--fashion-images", type=int, default=FASHION_TRAIN)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    configure_environment()
    if a.threads:
        torch.set_num_threads(a.threads)
    images = detector_training_images(load_manifest(), a.fashion_images)
    cfg = CopyDetectorConfig(image_size=a.image_size, width=a.width, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                             max_seconds=a.seconds, seed=a.seed)
    model, summary = train_copy_detector(images, cfg, log=lambda m: print(m, flush=True))
    summary["training_set"] = f"pipelines.demo.copy_detection_set (fashion_images={a.fashion_images})"
    save_copy_detector(model, a.out, summary)
    print(json.dumps({"out": a.out, **summary}), flush=True)
    return summary


if __name__ == "__main__":
    run()
