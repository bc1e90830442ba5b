"""The planted-copy measurement of a copy detector: copies of eval images are planted among
training images, a threshold is chosen on one half of them and precision/recall measured at it on
the other (the protocol of ``tests/contamination/test_copy_detection.py`` and
``bench/bench_copy_detection.py``; the report calibrates its threshold the same way,
:func:`contamination.analysis.calibrate`)."""

from __future__ import annotations

import numpy as np

from contamination.overlap import choose_threshold, precision_recall


def measure_planted(detector, case: tuple[list, list, list], n_plant: int, min_precision: float = 0.95) -> list[dict]:
    """Two measurements of ``detector`` (:class:`contamination.analysis.Detector`) on ``case`` =
    (training images, eval originals, copies of eval originals ``0..2*n_plant-1``): gallery =
    training images + copies; eval originals ``0..n_plant-1`` calibrate (threshold: highest
    recall at precision >= ``min_precision``, negatives ``2*n_plant..3*n_plant-1``), originals
    ``n_plant..2*n_plant-1`` measure precision/recall at it (negatives the next ``n_plant``);
    then the halves exchanged. Each also has the rank-1 rate (nearest gallery image = own copy)
    over all planted copies."""
    from PIL import Image

    train, evals, copies = case
    gallery = detector.embed([Image.fromarray(a) for a in train + copies])
    score, idx = detector.nearest(detector.embed_queries(evals), gallery)
    own = idx[:2 * n_plant] == len(train) + np.arange(2 * n_plant)
    halves = [(score[pos], own[pos], score[2 * n_plant + pos])
              for pos in (np.arange(n_plant), np.arange(n_plant, 2 * n_plant))]
    out = []
    for (cp, cc, cn), (mp, mc, mn) in (halves, halves[::-1]):
        chosen = choose_threshold(precision_recall(cp, cc, cn), min_precision)
        at = precision_recall(mp, mc, mn, thresholds=np.array([chosen["threshold"]]))
        out.append({"threshold": chosen["threshold"], "calibration": chosen, "precision": float(at["precision"][0]),
                    "recall": float(at["recall"][0]), "rank1": float(own.mean())})
    return out
