"""Eval-overlap analysis (CLIP §5, App. C): nearest-neighbour search of eval images among training
images, threshold calibration on planted copies, and the Overlap/Clean/All statistics (pHash codes
and their exact search live in ``curation/images/phash.py``, shared with image dedup and the
``decontaminate`` stage). Array code only: no
models, no files.

Search (:func:`nearest`): cosine (inner product of L2-normalised rows) with faiss —
``IndexFlatIP`` over gallery chunks of ``chunk_rows`` with a running best (exact, memory bounded,
the training side may be streamed), or ``IndexIVFFlat`` past ``flat_max_rows`` gallery rows
(``bench/bench_overlap.py`` measured where it pays). Perceptual hashes (:func:`curation.images.phash.phash_codes`) are
searched exactly with ``IndexBinaryFlat`` and turned into a similarity ``1 - hamming / 64``, so
both detectors share thresholds in [0, 1] and everything downstream.

Statistics (:func:`split_statistics`): Overlap = score >= threshold, Clean = the rest, All;
accuracy of each; All - Clean; a one-sided binomial test of Overlap's hits against Clean's
accuracy (alternative "greater"); a two-sided 99.5% Clopper-Pearson interval on Overlap's
accuracy from beta quantiles; :func:`bonferroni` across datasets. An empty Overlap (or Clean)
gives ``None`` for what it cannot define, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SearchConfig:
    """How the nearest training image of each eval image is found."""

    flat_max_rows: int = 200_000  # exact IndexFlatIP up to this many gallery rows, IVF past it
    chunk_rows: int = 131_072  # gallery rows per exact-search chunk (bounds memory)
    query_batch: int = 4096  # eval rows per search call
    ivf_lists: int = 0  # IVF lists (0: sqrt(rows); bench_overlap.py: 4*sqrt made k-means cost more than flat)
    ivf_probe: int = 16  # IVF lists visited per query
    threads: int = 0  # faiss OpenMP threads (0: faiss's default)


# ---------------------------------------------------------------- search


class RunningBest:
    """Best (score, gallery id) per query over gallery chunks searched one after another."""

    def __init__(self, num_queries: int):
        self.score = np.full(num_queries, -np.inf, np.float32)
        self.index = np.full(num_queries, -1, np.int64)
        self.seen = 0  # gallery rows so far: global id = seen + local id

    def add_chunk(self, queries: np.ndarray, chunk: np.ndarray, config: SearchConfig) -> None:
        """Search ``queries`` (Q, D) in ``chunk`` (G, D) exactly and keep the better matches."""
        if len(chunk):
            index = faiss.IndexFlatIP(chunk.shape[1])
            index.add(np.ascontiguousarray(chunk, np.float32))
            for s in range(0, len(queries), config.query_batch):
                score, ids = index.search(np.ascontiguousarray(queries[s:s + config.query_batch], np.float32), 1)
                better = score[:, 0] > self.score[s:s + len(score)]
                self.score[s:s + len(score)][better] = score[better, 0]
                self.index[s:s + len(score)][better] = ids[better, 0] + self.seen
        self.seen += len(chunk)


def nearest_ivf(queries: np.ndarray, gallery: np.ndarray, config: SearchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Approximate nearest neighbour by inner product with ``IndexIVFFlat`` (k-means on a sample
    of at most 40 rows per list, faiss's minimum without a warning; ``ivf_probe`` lists visited)."""
    n, d = gallery.shape
    nlist = config.ivf_lists or max(1, int(np.sqrt(n)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)
    index.train(np.ascontiguousarray(gallery[np.sort(sample)], np.float32))
    for s in range(0, n, config.chunk_rows):
        index.add(np.ascontiguousarray(gallery[s:s + config.chunk_rows], np.float32))
    index.nprobe = config.ivf_probe
    scores, ids = np.empty(len(queries), np.float32), np.empty(len(queries), np.int64)
    for s in range(0, len(queries), config.query_batch):
        score, idx = index.search(np.ascontiguousarray(queries[s:s + config.query_batch], np.float32), 1)
        scores[s:s + len(score)], ids[s:s + len(score)] = score[:, 0], idx[:, 0]
    scores[ids < 0] = -np.inf
    return scores, ids


def nearest(queries: np.ndarray, gallery: np.ndarray | Iterable[np.ndarray],
            config: SearchConfig = SearchConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine, gallery row) of each L2-normalised query row. ``gallery`` is one array or
    an iterable of chunks (streamed, exact flat search); a single array with more than
    ``flat_max_rows`` rows goes to IVF. (-inf, -1) against an empty gallery."""
    if config.threads:
        faiss.omp_set_num_threads(config.threads)
    queries = np.asarray(queries, np.float32)
    if isinstance(gallery, np.ndarray):
        if len(gallery) > config.flat_max_rows:
            return nearest_ivf(queries, gallery, config)
        whole = gallery  # the generator must not close over the name it is assigned to
        gallery = (whole[s:s + config.chunk_rows] for s in range(0, len(whole), config.chunk_rows))
    best = RunningBest(len(queries))
    for chunk in gallery:
        best.add_chunk(queries, np.asarray(chunk, np.float32), config)
    return best.score, best.index


# ---------------------------------------------------------------- threshold from planted copies


def precision_recall(pos_scores: np.ndarray, pos_correct: np.ndarray, neg_scores: np.ndarray,
                     thresholds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Precision/recall of "score >= t" per threshold ``t``. Positives are eval images with a
    planted copy in the gallery (``pos_correct``: their nearest neighbour *is* that copy);
    negatives have none. A hit is a positive above t matched to its own copy; a false
    positive is a negative above t or a positive above t matched to something else."""
    pos_scores, neg_scores = np.asarray(pos_scores, float), np.asarray(neg_scores, float)
    if thresholds is None:
        thresholds = np.unique(np.concatenate([pos_scores, neg_scores, [1.0]]))
        thresholds = thresholds[np.isfinite(thresholds)]
    t = np.asarray(thresholds, float)[:, None]
    tp = ((pos_scores[None, :] >= t) & np.asarray(pos_correct, bool)[None, :]).sum(1)
    flagged = (pos_scores[None, :] >= t).sum(1) + (neg_scores[None, :] >= t).sum(1)
    precision = np.where(flagged > 0, tp / np.maximum(flagged, 1), 1.0)
    recall = tp / max(len(pos_scores), 1)
    return {"threshold": t[:, 0], "precision": precision, "recall": recall}


def choose_threshold(curve: dict[str, np.ndarray], min_precision: float = 0.95) -> dict[str, float]:
    """The threshold of highest recall among those with precision >= ``min_precision`` (the
    highest such threshold on ties: the most conservative split); if none reaches it, the
    threshold of highest precision. Returns threshold, precision, recall, met (bool)."""
    p, r, t = curve["precision"], curve["recall"], curve["threshold"]
    ok = p >= min_precision
    if ok.any():
        best_recall = r[ok].max()
        i = int(np.flatnonzero(ok & (r == best_recall)).max())
    else:
        i = int(np.lexsort((t, p))[-1])
    return {"threshold": float(t[i]), "precision": float(p[i]), "recall": float(r[i]), "met": bool(ok.any())}


# ---------------------------------------------------------------- statistics


def clopper_pearson(k: int, n: int, confidence: float = 0.995) -> tuple[float, float] | None:
    """Two-sided exact binomial interval of k/n from beta quantiles; None when n == 0."""
    if n == 0:
        return None
    alpha = 1 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def split_statistics(correct: np.ndarray, overlap: np.ndarray, confidence: float = 0.995) -> dict:
    """Overlap/Clean/All statistics of per-image zero-shot ``correct`` flags split by the
    ``overlap`` mask: n_all, n_overlap, overlap_pct, acc_all, acc_clean, acc_overlap,
    delta_all_minus_clean, p_value (one-sided binomial: Overlap hits vs Clean accuracy,
    alternative "greater"), ci_overlap ([lo, hi] Clopper-Pearson at ``confidence``).
    Undefined values (empty split) are None."""
    correct, overlap = np.asarray(correct, bool), np.asarray(overlap, bool)
    if correct.shape != overlap.shape:
        raise ValueError(f"correct {correct.shape} and overlap {overlap.shape} differ in shape")
    n_all, n_overlap = len(correct), int(overlap.sum())
    n_clean, hits_overlap = n_all - n_overlap, int(correct[overlap].sum())
    acc = lambda m: float(correct[m].mean()) if m.any() else None  # noqa: E731
    acc_all, acc_clean, acc_overlap = acc(np.ones(n_all, bool)), acc(~overlap), acc(overlap)
    p_value = None
    if n_overlap and n_clean:
        p_value = float(stats.binomtest(hits_overlap, n_overlap, acc_clean, alternative="greater").pvalue)
    ci = clopper_pearson(hits_overlap, n_overlap, confidence)
    return {
        "n_all": n_all, "n_overlap": n_overlap,
        "overlap_pct": 100.0 * n_overlap / n_all if n_all else None,
        "acc_all": acc_all, "acc_clean": acc_clean, "acc_overlap": acc_overlap,
        "delta_all_minus_clean": (acc_all - acc_clean) if acc_all is not None and acc_clean is not None else None,
        "p_value": p_value, "ci_overlap": list(ci) if ci else None,
    }


def bonferroni(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Bonferroni-adjusted p-values: p * m capped at 1, m = number of tests actually made
    (datasets whose p-value is defined); None stays None."""
    m = sum(p is not None for p in p_values.values())
    return {k: (min(1.0, p * m) if p is not None else None) for k, p in p_values.items()}
