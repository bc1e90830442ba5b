"""Data-quality gates over a run's stage stats: figures, bands, a pass/fail decision.

A gate reads ``<out>/curation/stats/<stage>.json`` (``{stage, in, out, rejected: {reason: n}}``)
and ``<out>/curation/entry_counts.parquet`` through fsspec (so ``s3://``/``gs://`` run dirs work),
computes a few figures, and checks each against its closed band ``[lo, hi]``:

| gate        | stage(s)            | figure              | value                                        |
|-------------|---------------------|---------------------|----------------------------------------------|
| selection   | text                | english_share       | 1 − language rejects / in (wanted languages) |
| selection   | match               | matched_share       | out / in                                     |
| selection   | entry_counts        | cap_share           | entries with c_e ≥ t / entries with c_e > 0  |
| download    | download            | download_success    | out / in                                     |
| shards      | shards              | shard_samples       | out                                          |

A figure over a stage with no rows in is 0 (and so fails any band that excludes 0). No Airflow
import: the DAGs in ``pipelines/dags/`` call :func:`run_gate`, tests call it directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from curation.text.threshold import METACLIP_T
from storage.layout import RunLayout

GATES = ("selection", "download", "shards")


@dataclass(frozen=True)
class Band:
    """A closed interval a figure must lie in (``hi`` may be ``inf``)."""

    lo: float
    hi: float = math.inf

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"[{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True)
class GateBands:
    """The bands of every figure (the DAG's params carry the same names and defaults)."""

    english_share: Band = Band(0.3, 1.0)  # a web pool is ~40-60% English; below 0.3 the pool or LID is off
    matched_share: Band = Band(0.01, 1.0)  # English captions matching ≥ 1 query; ~0 means a wrong query list
    cap_share: Band = Band(0.0, 0.5)  # matched entries at the balancing cap t; above 0.5, t is too low
    download_success: Band = Band(0.5, 1.0)  # images fetched / URLs tried; below 0.5 the pool is stale
    shard_samples: Band = Band(1, math.inf)  # samples in the final shards

    @classmethod
    def from_mapping(cls, bands: dict) -> "GateBands":
        """From ``{figure: [lo, hi]}`` (``hi`` None = unbounded); unknown figures are an error."""
        unknown = set(bands) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate figures {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        parsed = {}
        for name, pair in bands.items():
            lo, hi = pair
            parsed[name] = Band(float(lo), math.inf if hi is None else float(hi))
            if parsed[name].lo > parsed[name].hi:
                raise ValueError(f"gate band {name}: lo {lo} > hi {hi}")
        return cls(**parsed)


@dataclass(frozen=True)
class Figure:
    """One measured figure of one stage, with its band and verdict."""

    stage: str
    name: str
    value: float
    band: Band
    detail: str  # how it was computed, e.g. "4204 of 4221"

    @property
    def passed(self) -> bool:
        return self.value in self.band

    def describe(self) -> str:
        verdict = "ok" if self.passed else "OUT OF BAND"
        return f"stage {self.stage}: {self.name} = {self.value:.4g} ({self.detail}), band {self.band}: {verdict}"


class GateFailed(RuntimeError):
    """A figure left its band; the message names the stage, figure, value and band of each."""


@dataclass(frozen=True)
class GateResult:
    """The decision of one gate and the figures behind it (JSON-ready through :meth:`to_dict`)."""

    gate: str
    figures: tuple[Figure, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.figures)

    def to_dict(self) -> dict:
        figs = [{**asdict(f), "band": [f.band.lo, None if math.isinf(f.band.hi) else f.band.hi],
                 "passed": f.passed} for f in self.figures]
        return {"gate": self.gate, "passed": self.passed, "figures": figs}


def read_stage_stats(run_dir: str, stage: str) -> dict:
    """``<run_dir>/curation/stats/<stage>.json``; FileNotFoundError naming it if the stage has not run."""
    layout = RunLayout(run_dir)
    path = layout.stats(stage)
    if not layout.exists(path):
        raise FileNotFoundError(f"gate needs {path}: stage '{stage}' has not written its stats")
    return layout.read_json(path)


def _share(num: int, den: int) -> float:
    return num / den if den else 0.0


def selection_figures(run_dir: str, t: float, bands: GateBands, t_scaled: bool = False) -> list[Figure]:
    """English share (stage text), matched share (stage match), share of entries at the cap.
    With ``t_scaled`` (the run's t was scaled to its pool, so that the entries under t hold
    MetaCLIP's tail share of the matches) the cap share follows from that choice: it is reported,
    in the band [0, 1], not judged."""
    text = read_stage_stats(run_dir, "text")
    language_reasons = [r for r in ("not_english", "unwanted_language", "uncertain_language") if r in text["rejected"]]
    not_en = sum(int(text["rejected"][r]) for r in language_reasons)
    match = read_stage_stats(run_dir, "match")
    at_cap, matched = _entries_at_cap(run_dir, t)
    return [
        Figure("text", "english_share", _share(text["in"] - not_en, text["in"]), bands.english_share,
               f"{text['in'] - not_en} of {text['in']} not rejected as {'/'.join(language_reasons) or 'not_english'}"),
        Figure("match", "matched_share", _share(match["out"], match["in"]), bands.matched_share,
               f"{match['out']} of {match['in']} matched"),
        Figure("balance", "cap_share", _share(at_cap, matched), Band(0.0, 1.0) if t_scaled else bands.cap_share,
               f"{at_cap} of {matched} matched entries with count >= t={t:g}"
               + (" (t scaled to the pool: reported, not judged)" if t_scaled else "")),
    ]


def _entries_at_cap(run_dir: str, t: float) -> tuple[int, int]:
    """(entries with count ≥ t, entries with count > 0) from ``entry_counts.parquet``."""
    import pyarrow.compute as pc

    layout = RunLayout(run_dir)
    path = layout.entry_counts
    if not layout.exists(path):
        raise FileNotFoundError(f"gate needs {path}: the selection has not written its entry counts")
    counts = layout.read_parquet(path, ["count"]).column("count")
    matched = int(pc.sum(pc.greater(counts, 0)).as_py() or 0)
    return int(pc.sum(pc.greater_equal(counts, t)).as_py() or 0), matched


def download_figures(run_dir: str, bands: GateBands) -> list[Figure]:
    """Download success rate: images fetched / URLs the guard let through (stage download)."""
    stats = read_stage_stats(run_dir, "download")
    top = sorted(stats["rejected"].items(), key=lambda kv: -kv[1])[:3]
    detail = f"{stats['out']} of {stats['in']} fetched" + (f"; top rejects {dict(top)}" if top else "")
    return [Figure("download", "download_success", _share(stats["out"], stats["in"]), bands.download_success, detail)]


def shard_figures(run_dir: str, bands: GateBands) -> list[Figure]:
    """Samples written to the final WebDataset shards (stage shards)."""
    stats = read_stage_stats(run_dir, "shards")
    return [Figure("shards", "shard_samples", float(stats["out"]), bands.shard_samples,
                   f"{stats['out']} samples from {stats['in']} kept images")]


def evaluate_gate(gate: str, run_dir: str, bands: GateBands = GateBands(), t: float = METACLIP_T,
                  t_scaled: bool = False) -> GateResult:
    """Compute ``gate``'s figures on ``run_dir`` (FileNotFoundError if a stage's stats are missing);
    ``t``: the balancing threshold the run used (``t_scaled``: see :func:`selection_figures`)."""
    if gate == "selection":
        figures = selection_figures(run_dir, t, bands, t_scaled)
    elif gate == "download":
        figures = download_figures(run_dir, bands)
    elif gate == "shards":
        figures = shard_figures(run_dir, bands)
    else:
        raise ValueError(f"unknown gate {gate!r}; known: {GATES}")
    return GateResult(gate, tuple(figures))


def failure_message(result: GateResult, run_dir: str) -> str:
    """Names, per failing figure, the stage, the figure, its value and its band."""
    failed = "; ".join(f.describe() for f in result.figures if not f.passed)
    return f"gate {result.gate} failed on {run_dir}: {failed}"


def run_gate(gate: str, run_dir: str, bands: GateBands = GateBands(), t: float = METACLIP_T,
             t_scaled: bool = False) -> GateResult:
    """:func:`evaluate_gate`, then raise :class:`GateFailed` (see :func:`failure_message`) unless
    every figure is in its band."""
    result = evaluate_gate(gate, run_dir, bands, t, t_scaled)
    if not result.passed:
        raise GateFailed(failure_message(result, run_dir))
    return result
