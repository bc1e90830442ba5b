"""Overlap statistics against direct computations on known counts, Bonferroni, the empty
overlap, and the report files (results.json keys, report.md, report.html whose every image loads)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from scipy.special import comb

from contamination.overlap import bonferroni, choose_threshold, clopper_pearson, precision_recall, split_statistics
from contamination.report import RESULT_KEYS, write_report


def flags(n_overlap: int, hits_overlap: int, n_clean: int, hits_clean: int) -> tuple[np.ndarray, np.ndarray]:
    correct = np.array([1] * hits_overlap + [0] * (n_overlap - hits_overlap)
                       + [1] * hits_clean + [0] * (n_clean - hits_clean), bool)
    return correct, np.arange(len(correct)) < n_overlap


def test_split_statistics_on_known_counts():
    correct, overlap = flags(20, 18, 180, 117)  # Overlap 90%, Clean 65%
    s = split_statistics(correct, overlap)
    assert (s["n_all"], s["n_overlap"]) == (200, 20) and s["overlap_pct"] == pytest.approx(10.0)
    assert (s["acc_overlap"], s["acc_clean"], s["acc_all"]) == pytest.approx((0.9, 0.65, 135 / 200))
    assert s["delta_all_minus_clean"] == pytest.approx(135 / 200 - 0.65)
    # one-sided binomial test, directly: P(X >= 18 | n=20, p=0.65)
    direct = sum(comb(20, k, exact=True) * 0.65 ** k * 0.35 ** (20 - k) for k in range(18, 21))
    assert s["p_value"] == pytest.approx(direct, rel=1e-9)
    assert s["p_value"] == pytest.approx(stats.binomtest(18, 20, 0.65, alternative="greater").pvalue)
    # 99.5% two-sided Clopper-Pearson: scipy's exact interval of a two-sided test
    ci = stats.binomtest(18, 20, 0.65).proportion_ci(confidence_level=0.995, method="exact")
    assert s["ci_overlap"] == pytest.approx([ci.low, ci.high], rel=1e-9)
    lo, hi = s["ci_overlap"]  # and by definition: the tail at each end is 0.25%
    assert stats.binom.sf(17, 20, lo) == pytest.approx(0.0025, rel=1e-6)
    assert stats.binom.cdf(18, 20, hi) == pytest.approx(0.0025, rel=1e-6)


def test_interval_ends_and_all_or_nothing_overlap():
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.0025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == pytest.approx((0.0025 ** (1 / 10), 1.0))
    s = split_statistics(*flags(5, 5, 0, 0))  # everything overlaps: no clean accuracy to test against
    assert s["acc_clean"] is None and s["p_value"] is None and s["delta_all_minus_clean"] is None
    assert s["ci_overlap"] is not None


def test_empty_overlap_is_a_result_not_an_error():
    s = split_statistics(*flags(0, 0, 50, 20))
    assert s["n_overlap"] == 0 and s["overlap_pct"] == 0.0 and s["acc_overlap"] is None
    assert s["p_value"] is None and s["ci_overlap"] is None
    assert s["delta_all_minus_clean"] == 0.0


def test_bonferroni_counts_only_tests_made():
    adjusted = bonferroni({"a": 0.01, "b": 0.2, "c": None, "d": 0.6})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.6, "c": None, "d": 1.0})


def test_threshold_is_the_highest_recall_at_the_precision_floor():
    pos = np.array([0.99, 0.98, 0.97, 0.90, 0.80])
    own = np.array([True, True, True, True, False])  # the 0.80 positive matched something else
    neg = np.array([0.95, 0.5, 0.4])
    curve = precision_recall(pos, own, neg)
    chosen = choose_threshold(curve, 0.95)
    assert chosen == {"threshold": 0.97, "precision": 1.0, "recall": 0.6, "met": True}
    assert choose_threshold(curve, 0.75)["threshold"] == 0.90  # 4 hits of 5 flagged: 0.8
    at = precision_recall(pos, own, neg, thresholds=np.array([0.9]))
    assert at["precision"][0] == pytest.approx(0.8) and at["recall"][0] == pytest.approx(0.8)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def test_report_files_and_every_html_image_loads(tmp_path):
    results = {"fashion-mnist": {**split_statistics(*flags(20, 18, 180, 117)),
                                 "threshold": 0.9, "precision": 1.0, "recall": 0.96},
               "digits": {**split_statistics(*flags(0, 0, 50, 20)), "threshold": 0.8, "precision": 0.97, "recall": 0.9}}
    adjusted = bonferroni({n: r["p_value"] for n, r in results.items()})
    curve = precision_recall(np.array([0.99, 0.9]), np.array([True, True]), np.array([0.5]))
    grey = Image.fromarray(np.full((28, 28), 128, np.uint8))
    pairs = {n: [{"eval_image": grey, "eval_id": "3", "score": 0.95, "train_key": "k", "train_image": grey},
                 {"eval_image": grey, "eval_id": "4", "score": 0.5, "train_key": "-", "train_image": None}]
             for n in results}
    meta = {"detector": "phash", "train_data": "shards/*.tar", "train_images": 100, "checkpoint": "ckpt",
            "min_precision": 0.95}
    files = write_report(tmp_path, results, adjusted, {n: (curve, choose_threshold(curve)) for n in results},
                         pairs, meta)
    body = json.loads((tmp_path / "results.json").read_text())
    assert set(body) == {"fashion-mnist", "digits"}
    assert all(list(r) == list(RESULT_KEYS) for r in body.values())
    assert RESULT_KEYS == ("n_all", "n_overlap", "overlap_pct", "acc_all", "acc_clean", "acc_overlap",
                           "delta_all_minus_clean", "p_value", "ci_overlap", "threshold", "precision", "recall")
    assert body["digits"]["p_value"] is None and body["digits"]["ci_overlap"] is None
    md = (tmp_path / "report.md").read_text()
    assert "| fashion-mnist |" in md and "n/a" in md
    parser = _Images()
    parser.feed((tmp_path / "report.html").read_text())
    assert len(parser.src) == 2 + 2 + 2  # overlap %, All - Clean, a PR curve and a pair grid per dataset
    for src in parser.src:
        with Image.open(tmp_path / src) as im:  # exists and decodes
            im.verify()
    assert sorted(files["pngs"]) == sorted(str(tmp_path / s) for s in parser.src)


def test_planted_copies_get_the_training_images_resize():
    """The calibration's planted copies are resized as curation resized the training images:
    the side is found from the shards' image sizes ('auto') or given, and the copy goes through
    curation's own check_image (a white-bordered square)."""
    from contamination.analysis import as_curated, curated_side

    curated = np.array([[256, 256]] * 500)
    assert curated_side("auto", curated) == 256
    assert curated_side("auto", np.concatenate([curated, [[300, 200]] * 10])) is None  # 2% not curated
    assert curated_side("auto", np.zeros((0, 2), int)) is None and curated_side("none", curated) is None
    assert curated_side("64", np.array([[300, 200]])) == 64
    with pytest.raises(ValueError, match="--train-image-size"):
        curated_side("big", curated)
    tall = np.zeros((120, 40, 3), np.uint8)  # black, 3x taller than wide
    out = np.asarray(as_curated(tall, 96))
    assert out.shape == (96, 96, 3)
    assert out[:, :30].min() > 240 and out[:, 36:60].max() < 15  # white borders left and right, the image between
