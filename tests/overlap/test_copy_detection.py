"""Planted-copy precision/recall of both detector backends on real images (the sample pool's
openclipart drawings and emoji), at a threshold chosen on one planted set and measured on another.

Why the first version of this test measured precision 0.15 / recall 0.28: its "negatives" were
not negatives. The sample images hold many true duplicates — the same openclipart drawing filed
under two categories, emoji skin-tone variants, near-identical keycap emoji — so 29% of eval
images had a pHash-identical twin among the "training" images, and their nearest neighbour was
that twin, not the planted copy. The base set here is therefore de-duplicated first (skin-tone
variants dropped; greedy: an image within pHash distance 12 or with a 16x16 thumbnail
correlation > 0.9 of one already kept is skipped).

Protocol: 1000 training images and 400 held-out eval images (disjoint). 100 eval images get a
planted copy (crop keeping 70-95% of each side, resize 0.5-3x, brightness x0.75-1.25, JPEG
q40-90) for calibration and 100 others for the measurement; 100 + 100 further eval images have
no copy (negatives). Gallery = training images + planted copies, which is also what the learned
detector trains on (as the report trains it on the training shards); no eval image is trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from curation.overlap import choose_threshold, nearest, nearest_binary, phash_codes, precision_recall
from pretrain.copydetect import (
    CopyDetectorConfig,
    embed_images,
    load_copy_detector,
    make_copy,
    save_copy_detector,
    to_rgb_array,
    train_copy_detector,
)

N_TRAIN, N_EVAL, N_PLANT = 1000, 400, 100
SKIN_TONES = ("1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff")


def distinct_images(images_dir: Path, n: int) -> list[np.ndarray]:
    """``n`` mutually distinct sample images (see module doc) as 128x128 RGB arrays."""
    paths = sorted(p for p in (images_dir / "openclipart").rglob("*.png") if p.stat().st_size < 200_000)
    paths += sorted(p for p in (images_dir / "emoji").glob("*.png") if not any(t in p.name for t in SKIN_TONES))
    kept, bits, thumbs = [], [], []
    for i in np.random.default_rng(0).permutation(len(paths)):
        img = cv2.resize(to_rgb_array(Image.open(paths[i])), (128, 128), interpolation=cv2.INTER_AREA)
        b = np.unpackbits(phash_codes([Image.fromarray(img)])[0])
        t = cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        t = (t - t.mean()) / (np.linalg.norm(t - t.mean()) + 1e-6)
        if kept and ((np.asarray(bits) != b).sum(1).min() <= 12 or (np.asarray(thumbs) @ t).max() > 0.9):
            continue
        kept.append(img), bits.append(b), thumbs.append(t)
        if len(kept) == n:
            return kept
    raise AssertionError(f"only {len(kept)} distinct sample images, need {n}")


@pytest.fixture(scope="module")
def planted(sample):
    images = distinct_images(Path(sample["sample_images_dir"]), N_TRAIN + N_EVAL)
    train, evals = images[:N_TRAIN], images[N_TRAIN:]
    rng = np.random.default_rng(7)
    copies = [make_copy(evals[i], rng) for i in range(2 * N_PLANT)]  # eval 0..199 have a copy
    return train, evals, copies


def measure(score: np.ndarray, idx: np.ndarray, n_train: int) -> dict:
    """Threshold chosen on the calibration half (highest recall at precision >= 0.95),
    precision/recall at it on the measurement half, and the rank-1 rate (nearest = own copy)."""
    halves = []
    for half in (0, 1):
        pos = np.arange(half * N_PLANT, (half + 1) * N_PLANT)
        halves.append((score[pos], idx[pos] == n_train + pos, score[2 * N_PLANT + pos]))
    (cp, cc, cn), (mp, mc, mn) = halves
    chosen = choose_threshold(precision_recall(cp, cc, cn), 0.95)
    at = precision_recall(mp, mc, mn, thresholds=np.array([chosen["threshold"]]))
    return {"threshold": chosen["threshold"], "calibration": chosen, "precision": float(at["precision"][0]),
            "recall": float(at["recall"][0]), "rank1": float(np.mean(np.concatenate([cc, mc])))}


@pytest.fixture(scope="module")
def learned(planted, tmp_path_factory):
    train, evals, copies = planted
    model, summary = train_copy_detector(train + copies, CopyDetectorConfig(image_size=32, epochs=25, seed=0))
    weights = tmp_path_factory.mktemp("detector") / "copy_detector.pt"
    save_copy_detector(model, weights, summary)
    model = load_copy_detector(weights)  # the weights_only round trip is what the report uses
    score, idx = nearest(embed_images(model, evals), embed_images(model, train + copies))
    result = {**measure(score, idx, len(train)), **summary}
    print(json.dumps({"learned": result}))
    return result


@pytest.fixture(scope="module")
def phash(planted):
    train, evals, copies = planted
    gallery = phash_codes([Image.fromarray(a) for a in train + copies])
    score, idx = nearest_binary(phash_codes([Image.fromarray(a) for a in evals]), gallery)
    result = measure(score, idx, len(train))
    print(json.dumps({"phash": result}))
    return result


def test_learned_detector_ranks_copies_far_better_than_phash(learned, phash):
    """Measured (2 cores, 2026-11-29): learned rank-1 0.64-0.69, pHash 0.16 — a crop defeats pHash."""
    assert learned["rank1"] >= 0.55, learned
    assert phash["rank1"] <= 0.30, phash
    assert learned["rank1"] >= phash["rank1"] + 0.3


def test_phash_on_planted_copies(phash):
    """pHash, stated honestly: near-perfect precision only at a threshold that finds almost none
    of these cropped copies (measured: recall 0.02-0.05 at the chosen threshold)."""
    assert phash["recall"] <= 0.15, phash
    assert phash["calibration"]["threshold"] >= 0.8, phash
