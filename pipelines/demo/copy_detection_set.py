"""The sample data's copy-detection images: what the shipped copy detector
(``contamination/assets/copy_detector.pt``, ``pipelines/demo/train_copy_detector.py``) is trained on and what
``tests/contamination/test_copy_detection.py`` measures it on — disjoint by construction.

The sample images hold many true duplicates (the same openclipart drawing filed under two
categories, emoji skin-tone variants, near-identical keycap emoji), which would be "negatives"
that are really copies; :func:`distinct_sample_images` therefore keeps mutually distinct ones
(skin-tone variants dropped; greedy in a seeded random order: an image within pHash distance 12,
or with a 16x16 thumbnail correlation > 0.9, of one already kept is skipped — compared both as
the whole canvas and trimmed to its content's bounding box, since the same drawing placed at
another size or position on its canvas is the same image), as 128x128 RGB.
Near-blank images are dropped too (fewer than ``MIN_CONTENT`` of the pixels differ from the
median colour by more than 24 in some channel: a speck or a line of text on white): any two of
them, or one and a darkened copy of another, are duplicates to every detector (32 of 3,179).

Split: the first ``TRAIN`` distinct images are the detector's training images (and the test's
gallery of training images), the next ``EVAL`` its held-out eval originals. Fashion-MNIST *train*
images (upscaled like the demo's planted copies) are added to the detector's training; the
Fashion-MNIST *test* images (the demo's eval set, whose copies the demo plants) are never trained on.

Planted-copy measurement (:func:`planted_cases` here, :func:`contamination.planted.measure_planted`; the test and
``bench/bench_copy_detection.py``): per eval set, 1,000 eval originals; ``N_PLANT`` of them get a
planted copy (``make_copy``) for calibration and ``N_PLANT`` others for the measurement; ``N_PLANT``
+ ``N_PLANT`` further eval images have no copy (negatives). Gallery = the ``TRAIN`` training images
+ the copies. The threshold is chosen on the calibration half (highest recall at precision >=
0.95) and precision/recall are measured at it on the other half. Clipart: the held-out distinct
images. Fashion-MNIST (the demo's case): test images 0..999 at their native 28 px, copies made
from their 4x enlargement (``copy_source``), as the demo plants them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contamination.copydetect import MIN_CONTENT, content_mask, content_share

TRAIN, EVAL = 1000, 1000  # distinct sample images: detector training / held-out eval originals
N_PLANT = EVAL // 4  # 250: copies to choose the threshold, copies to measure it, negatives for each
FASHION_TRAIN = 3000  # Fashion-MNIST train images added to the detector's training
SKIN_TONES = ("1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff")


def trim_to_content(img: np.ndarray, size: int = 128) -> np.ndarray:
    """RGB ``img`` cropped to the bounding box of its content (:func:`content_mask`), padded to a
    square with its median colour and resized to ``size``."""
    import cv2

    median = np.median(img.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(content_mask(img, median))
    if len(ys) == 0:
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    box = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = box.shape[:2]
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = median.astype(np.uint8)
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = box
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


def _signature(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pHash bits, unit-norm centred 16x16 thumbnail) of RGB ``img``."""
    import cv2
    from PIL import Image

    from curation.images.phash import phash_codes

    bits = np.unpackbits(phash_codes([Image.fromarray(img)])[0])
    t = cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return bits, (t - t.mean()) / (np.linalg.norm(t - t.mean()) + 1e-6)


def distinct_sample_images(images_dir: str | Path, n: int = TRAIN + EVAL) -> list[np.ndarray]:
    """``n`` mutually distinct sample images (module doc) as 128x128 RGB uint8 arrays."""
    import cv2
    from PIL import Image

    from contamination.copydetect import to_rgb_array

    images_dir = Path(images_dir)
    paths = sorted(p for p in (images_dir / "openclipart").rglob("*.png") if p.stat().st_size < 200_000)
    paths += sorted(p for p in (images_dir / "emoji").glob("*.png") if not any(t in p.name for t in SKIN_TONES))
    kept, bits, thumbs, cbits, cthumbs = [], [], [], [], []
    for i in np.random.default_rng(0).permutation(len(paths)):
        img = cv2.resize(to_rgb_array(Image.open(paths[i])), (128, 128), interpolation=cv2.INTER_AREA)
        if content_share(img) < MIN_CONTENT:
            continue
        (b, t), (bc, tc) = _signature(img), _signature(trim_to_content(img))
        if kept and ((np.asarray(bits) != b).sum(1).min() <= 12 or (np.asarray(thumbs) @ t).max() > 0.9
                     or (np.asarray(cbits) != bc).sum(1).min() <= 12 or (np.asarray(cthumbs) @ tc).max() > 0.9):
            continue
        kept.append(img), bits.append(b), thumbs.append(t), cbits.append(bc), cthumbs.append(tc)
        if len(kept) == n:
            return kept
    raise ValueError(f"{images_dir}: only {len(kept)} distinct sample images, need {n}")


def detector_training_images(manifest: dict[str, str], fashion: int = FASHION_TRAIN) -> list[np.ndarray]:
    """The shipped detector's training images: the first ``TRAIN`` distinct sample images and
    ``fashion`` Fashion-MNIST train images (upscaled by :func:`contamination.copydetect.copy_source`)."""
    from contamination.copydetect import copy_source
    from pretrain.evalsets import load_fashion_mnist

    train = distinct_sample_images(manifest["sample_images_dir"])[:TRAIN]
    fm = load_fashion_mnist(manifest["fashion_mnist_dir"], "train")
    return train + [copy_source(fm.images[i]) for i in range(min(fashion, len(fm.labels)))]


def planted_cases(manifest: dict[str, str], seed: int = 0,
                  distinct: list[np.ndarray] | None = None) -> dict[str, tuple[list, list, list]]:
    """{"clipart" | "fashion": (training images, eval originals as PIL images, planted copies of
    eval images 0..2*N_PLANT-1)}; ``seed`` 0 is the test's copies (module doc); ``distinct``:
    :func:`distinct_sample_images`'s result when already at hand."""
    from PIL import Image

    from contamination.copydetect import copy_source, make_copy
    from pretrain.evalsets import load_fashion_mnist

    distinct = distinct if distinct is not None else distinct_sample_images(manifest["sample_images_dir"])
    train, evals = distinct[:TRAIN], distinct[TRAIN:TRAIN + EVAL]
    rng = np.random.default_rng(7 + 10 * seed)
    clipart = [make_copy(evals[i], rng) for i in range(2 * N_PLANT)]
    data = load_fashion_mnist(manifest["fashion_mnist_dir"], "test")
    rng = np.random.default_rng(8 + 10 * seed)
    fashion = [make_copy(copy_source(data.images[i]), rng) for i in range(2 * N_PLANT)]
    return {"clipart": (train, [Image.fromarray(e) for e in evals], clipart),
            "fashion": (train, [Image.fromarray(data.images[i]) for i in range(EVAL)], fashion)}


