"""Planted-copy precision/recall of both detector backends on real images, through the report's
own scoring (``pipelines.contamination_report.Detector``), at a threshold chosen on one planted
set and measured on another.

Images (``pipelines.demo.copy_detection_set``): mutually distinct openclipart drawings and emoji
(the sample pool holds true duplicates that would otherwise be "negatives"; see that module).
The learned detector is the shipped one (``pretrain/assets/copy_detector.pt``, trained by
``pipelines/train_copy_detector.py`` on the first 1,000 distinct images and 2,000 Fashion-MNIST
*train* images): the eval originals and every planted copy here are images it never saw.

Protocol per eval set: 1,000 eval originals; 250 get a planted copy (crop keeping 70-95% of each
side, resize 0.5-3x, brightness x0.75-1.25, JPEG q40-90: ``make_copy``) for calibration and 250
others for the measurement; 250 + 250 further eval images have no copy (negatives). Gallery =
the 1,000 training images + the 500 copies. Clipart: eval originals = the 1,000 held-out distinct
images. Fashion-MNIST (the demo's case): eval originals = test images 0..999 at their native
28 px, copies made from their 4x enlargement (``copy_source``), as the demo plants them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curation.overlap import choose_threshold, precision_recall
from pipelines.contamination_report import Detector
from pipelines.demo.copy_detection_set import EVAL, TRAIN, distinct_sample_images
from pipelines.train_copy_detector import SHIPPED
from pretrain.copydetect import (
    CopyDetectorConfig,
    copy_source,
    embed_images,
    load_copy_detector,
    make_copy,
    neighbour_batches,
    save_copy_detector,
    train_copy_detector,
)
from pretrain.evalsets import load_fashion_mnist

N_PLANT = EVAL // 4  # 250: copies to choose the threshold, copies to measure it, negatives for each


@pytest.fixture(scope="module")
def distinct(sample):
    images = distinct_sample_images(Path(sample["sample_images_dir"]))
    return images[:TRAIN], images[TRAIN:TRAIN + EVAL]


@pytest.fixture(scope="module")
def clipart(distinct):
    train, evals = distinct
    rng = np.random.default_rng(7)
    copies = [make_copy(evals[i], rng) for i in range(2 * N_PLANT)]  # eval 0..499 have a copy
    return train, [Image.fromarray(e) for e in evals], copies


@pytest.fixture(scope="module")
def fashion(distinct, sample):
    data = load_fashion_mnist(sample["fashion_mnist_dir"], "test")
    evals = [Image.fromarray(data.images[i]) for i in range(EVAL)]
    rng = np.random.default_rng(8)
    copies = [make_copy(copy_source(data.images[i]), rng) for i in range(2 * N_PLANT)]
    return distinct[0], evals, copies


def measure(detector: Detector, case) -> dict:
    """Threshold chosen on the calibration half (highest recall at precision >= 0.95),
    precision/recall at it on the measurement half, and the rank-1 rate (nearest = own copy)."""
    train, evals, copies = case
    gallery = detector.embed([Image.fromarray(a) for a in train + copies])
    score, idx = detector.nearest(detector.embed_queries(evals), gallery)
    halves = []
    for half in (0, 1):
        pos = np.arange(half * N_PLANT, (half + 1) * N_PLANT)
        halves.append((score[pos], idx[pos] == len(train) + pos, score[2 * N_PLANT + pos]))
    (cp, cc, cn), (mp, mc, mn) = halves
    chosen = choose_threshold(precision_recall(cp, cc, cn), 0.95)
    at = precision_recall(mp, mc, mn, thresholds=np.array([chosen["threshold"]]))
    return {"threshold": chosen["threshold"], "calibration": chosen, "precision": float(at["precision"][0]),
            "recall": float(at["recall"][0]), "rank1": float(np.mean(np.concatenate([cc, mc])))}


@pytest.fixture(scope="module")
def shipped():
    model = load_copy_detector(SHIPPED)  # weights_only=True, as the report loads it
    return Detector("learned", model)


@pytest.mark.parametrize("case", ["clipart", "fashion"])
def test_shipped_detector_finds_planted_copies(case, shipped, request):
    """Asserts what the shipped detector achieves, not the issue's goal (precision and recall
    >= 0.95), which it reaches on some splits but not robustly. Measured (2026-11-29, these
    weights, this protocol): clipart precision 0.950 / recall 0.920 (rank-1 0.984); Fashion-MNIST
    0.942 / 0.968 (rank-1 0.998). Swapping the calibration and measurement halves, and other
    trained detectors (50 epochs of 64; a 2-model ensemble), land at 0.94-0.97 each: the
    look-alike distinct images (flags, emoji variants, similar garments) set the ceiling."""
    result = measure(shipped, request.getfixturevalue(case))
    print(json.dumps({case: result}))
    assert result["precision"] >= 0.93 and result["recall"] >= 0.90, result
    assert result["rank1"] >= 0.98 and result["calibration"]["met"], result


@pytest.mark.parametrize("case", ["clipart", "fashion"])
def test_phash_on_planted_copies(case, request):
    """pHash, stated honestly: a crop moves every DCT coefficient, so the nearest hash is rarely
    the copy's (measured rank-1 0.16 on clipart) and the recall at >= 0.95 precision is small."""
    result = measure(Detector("phash"), request.getfixturevalue(case))
    print(json.dumps({case: result}))
    assert result["recall"] <= 0.5, result


def test_shipped_weights_provenance():
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert "copy_detection_set" in state["summary"]["training_set"]
    assert state["summary"]["steps"] > 1000 and CopyDetectorConfig(**state["config"]).temperature == 0.07


def test_training_from_scratch_learns_and_round_trips(distinct, tmp_path):
    """The report's own training path (no --detector-weights): a short run brings the InfoNCE
    loss well under chance, and the saved weights load (weights_only) into the same embeddings.
    (A run this short does not yet find make_copy copies better than the random init does —
    measured rank-1 0.66 untrained vs 0.20 after 6 epochs at 32 px; the shipped detector is
    what trained long enough: 22 minutes.)"""
    train, _ = distinct
    images = train[:256]
    cfg = CopyDetectorConfig(image_size=32, epochs=6, batch_size=64, lr=3e-3, seed=0)
    model, summary = train_copy_detector(images, cfg)
    save_copy_detector(model, tmp_path / "d.pt", summary)
    loaded = load_copy_detector(tmp_path / "d.pt")
    print(json.dumps(summary))
    assert summary["steps"] == 6 * 4 and summary["loss"] < 0.85 * np.log(64)  # chance: ln(batch)
    np.testing.assert_array_equal(embed_images(loaded, images[:32]), embed_images(model, images[:32]))
    order = neighbour_batches(loaded, list(images), cfg, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(images)))  # every image once per epoch
