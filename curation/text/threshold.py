"""The balancing threshold t scaled to the pool, the way MetaCLIP scales it.

MetaCLIP (Xu et al. 2023) balances its matched CommonCrawl pool (1.6B pairs, 5.67B matches)
with t = 20,000: the "tail" entries, those with fewer than t matches, hold 0.32B of the 5.67B
matches, a tail share of 5.6%; every head entry (c_e >= t) is sampled down. To carry t to
another pool, MetaCLIP 2 keeps that tail share fixed (its ``t_to_p`` / ``p_to_t``: t_en =
170k gives a tail proportion p, and each language's pool gets the t with the same p). We do
the same: the default t is the one whose tail share on *this* pool's counts (c_e before
balancing) is closest to 5.6%. On a pool like MetaCLIP's it gives ~20k; on the demo's few
thousand pairs it gives a t of a few matches, so the head is flattened as in MetaCLIP's data.
``--t`` overrides it.
"""

from __future__ import annotations

import numpy as np

METACLIP_T = 20_000  # MetaCLIP's t for its 400M set
METACLIP_TAIL_SHARE = 0.32 / 5.67  # matches held by entries under t = 20k (0.32B of 5.67B)


def tail_share(counts: np.ndarray, t: float) -> float:
    """Share of all matches held by entries with fewer than ``t`` matches (MetaCLIP's ``t_to_p``)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total else 0.0


def scaled_threshold(counts: np.ndarray, share: float = METACLIP_TAIL_SHARE) -> float:
    """The t whose :func:`tail_share` on ``counts`` is closest to ``share``. Candidates are the
    smallest nonzero count (an empty tail) and each distinct count + 1 (the entries up to that
    count in the tail): the smallest t for each possible tail, so head entries keep p_e < 1.
    A pool with no match has nothing to balance: MetaCLIP's t is returned."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"tail share must be in (0, 1), got {share}")
    matched = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])
    if matched.size == 0:
        return float(METACLIP_T)
    candidates = np.concatenate([matched[:1], np.unique(matched) + 1])
    below = np.concatenate([[0.0], np.cumsum(matched)])[np.searchsorted(matched, candidates)]
    return float(candidates[np.argmin(np.abs(below / matched.sum() - share))])


def resolve_threshold(counts: np.ndarray, t: float | None) -> float:
    """The threshold to balance with: ``t`` when given, else :func:`scaled_threshold`."""
    if t is None:
        return scaled_threshold(counts)
    if t <= 0:
        raise ValueError(f"balancing threshold t must be > 0, got {t}")
    return float(t)


REFERENCE_LANGUAGE = "en"  # MetaCLIP 2: English's t sets the tail share every language shares


def language_thresholds(counts: np.ndarray, languages: np.ndarray, t: float | None) -> dict:
    """MetaCLIP 2's per-language thresholds for a worldwide list (``languages``: each entry's):
    English's t (``t``, else :func:`scaled_threshold` of its counts) gives its tail share p
    (``t_to_p``); each language L gets t_L, the t whose tail share on L's counts is closest to p
    (``p_to_t``, the same search as :func:`scaled_threshold`). Without English entries (or
    matches), p is MetaCLIP's own tail share. Returns ``{"p", "reference", "t": {L: t_L}}``."""
    counts = np.asarray(counts, dtype=np.float64)
    languages = np.asarray(languages, dtype=object)
    english = counts[languages == REFERENCE_LANGUAGE]
    if english.size and english.sum() > 0:
        t_en = resolve_threshold(english, t)
        p = tail_share(english, t_en)
    else:
        t_en, p = (None if t is None else float(t)), METACLIP_TAIL_SHARE
    by_language = {}
    for language in sorted(set(languages.tolist())):
        if language == REFERENCE_LANGUAGE and t_en is not None:
            by_language[language] = float(t_en)
            continue
        own = counts[languages == language]
        matched = np.sort(own[own > 0])
        if not matched.size:
            by_language[language] = float(t_en if t_en is not None else METACLIP_T)
        elif p <= 0.0:  # an empty English tail: the smallest t with an empty tail
            by_language[language] = float(matched[0])
        elif p >= 1.0:  # every English entry in the tail: nothing is sampled down
            by_language[language] = float(matched[-1] + 1)
        else:
            by_language[language] = scaled_threshold(own, p)
    return {"p": float(p), "reference": REFERENCE_LANGUAGE, "t": by_language}


def entry_thresholds(counts: np.ndarray, t: float | None, languages: np.ndarray | None = None):
    """t for the balance: a float (:func:`resolve_threshold`) for a one-language list, else
    each entry's language's t (:func:`language_thresholds`) as a float64 array."""
    if languages is None:
        return resolve_threshold(counts, t)
    return per_entry(language_thresholds(counts, languages, t), languages)


def per_entry(plan: dict, languages: np.ndarray) -> np.ndarray:
    """Each entry's t (float64) from a :func:`language_thresholds` plan and the entries' languages."""
    languages = np.asarray(languages, dtype=object)
    out = np.empty(len(languages), dtype=np.float64)
    for language, value in plan["t"].items():
        out[languages == language] = value
    return out
