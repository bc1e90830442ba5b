"""Writes the contamination report: ``results.json`` (the interface keys), ``details.json``,
``report.md`` (a table like CLIP's Table/Figure 17), ``report.html`` and its PNGs (overlap % per
dataset, All - Clean with the Overlap interval, precision/recall per dataset with the chosen
threshold, a grid of the top matched eval/train pairs with their scores).

Input is plain data: per-dataset result dicts, curves, and the top pairs as PIL images.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from storage.files import atomic_write  # noqa: E402
from storage.layout import ReportLayout  # noqa: E402

RESULT_KEYS = ("n_all", "n_overlap", "overlap_pct", "acc_all", "acc_clean", "acc_overlap",
               "delta_all_minus_clean", "p_value", "ci_overlap", "threshold", "precision", "recall")


def _save(fig, path: str, dpi: int) -> None:
    """A figure as PNG at ``path`` (a local path or URI), written atomically."""
    atomic_write(str(path), lambda f: fig.savefig(f, format="png", dpi=dpi))


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else (f"{v:.3g}" if isinstance(v, float) else str(v))


def markdown_table(results: dict[str, dict], adjusted: dict[str, float | None]) -> str:
    """The paper-style table: one row per dataset."""
    lines = ["| dataset | overlap % | n overlap / all | acc All | acc Clean | acc Overlap | All − Clean (pp) "
             "| Overlap 99.5% CI | p (one-sided) | p Bonferroni | threshold | P / R (planted) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ci = r["ci_overlap"]
        ci_text = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "n/a"
        lines.append(
            f"| {name} | {_fmt(r['overlap_pct'])} | {r['n_overlap']} / {r['n_all']} | {_fmt(r['acc_all'], True)} "
            f"| {_fmt(r['acc_clean'], True)} | {_fmt(r['acc_overlap'], True)} | {_fmt(r['delta_all_minus_clean'], True)} "
            f"| {ci_text} | {_fmt(r['p_value'])} | {_fmt(adjusted.get(name))} | {r['threshold']:.3f} "
            f"| {r['precision']:.2f} / {r['recall']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_overlap(results: dict[str, dict], path: str) -> None:
    names = list(results)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3))
    ax.bar(names, [results[n]["overlap_pct"] or 0 for n in names], color="tab:blue")
    ax.set_ylabel("overlap % of eval set")
    ax.set_title("Detected overlap per dataset")
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)


def plot_delta(results: dict[str, dict], path: str) -> None:
    """All − Clean per dataset (points) and Overlap − Clean's 99.5% interval (bars)."""
    names = list(results)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3))
    for x, n in enumerate(names):
        r = results[n]
        if r["delta_all_minus_clean"] is not None:
            ax.plot(x, 100 * r["delta_all_minus_clean"], "o", color="tab:red")
        if r["ci_overlap"] and r["acc_clean"] is not None:
            lo, hi = (100 * (c - r["acc_clean"]) for c in r["ci_overlap"])
            ax.vlines(x, lo, hi, color="grey", alpha=0.6)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accuracy difference (pp)")
    ax.set_title("All − Clean (dots); Overlap − Clean 99.5% CI (bars)")
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)


def plot_pr(curve: dict, chosen: dict, name: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(curve["threshold"], curve["precision"], label="precision")
    ax.plot(curve["threshold"], curve["recall"], label="recall")
    ax.axvline(chosen["threshold"], color="black", ls="--", label=f"chosen {chosen['threshold']:.3f}")
    ax.set_xlabel("similarity threshold")
    ax.set_title(f"{name}: planted copies")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)


def plot_pairs(pairs: list[dict], path: str, title: str) -> None:
    """Grid of (eval image | nearest training image) with the score; ``pairs``: dicts with
    ``eval_image``, ``train_image`` (PIL), ``score``, ``eval_id``, ``train_key``."""
    rows = max(1, len(pairs))
    height = 2 * rows + 0.3  # inches: 0.3 above the grid for the title
    fig, axes = plt.subplots(rows, 2, figsize=(4, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, p in enumerate(pairs):
        axes[row, 0].imshow(np.asarray(p["eval_image"].convert("RGB")))
        axes[row, 0].set_title(f"eval {p['eval_id']}", fontsize=7)
        if p.get("train_image") is not None:
            axes[row, 1].imshow(np.asarray(p["train_image"].convert("RGB")))
        axes[row, 1].set_title(f"train {p['train_key']}  s={p['score']:.3f}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))  # the title clear of the first row's labels
    _save(fig, path, 80)
    plt.close(fig)


def write_report(out: str | Path, results: dict[str, dict], adjusted: dict[str, float | None],
                 curves: dict[str, tuple[dict, dict]], pairs: dict[str, list[dict]], meta: dict) -> dict:
    """Write every report file into the report directory ``out`` (a local path or URI, named by
    :class:`storage.layout.ReportLayout`), each atomically; return their paths."""
    layout = ReportLayout(str(out))
    clean = {n: {k: r[k] for k in RESULT_KEYS} for n, r in results.items()}
    layout.write_bytes(layout.results, (json.dumps(clean, indent=2) + "\n").encode())
    layout.write_bytes(layout.details, (json.dumps({"p_bonferroni": adjusted, **meta}, indent=2, default=str)
                                        + "\n").encode())
    pngs = {"overlap": "overlap_pct.png", "delta": "all_minus_clean.png"}
    plot_overlap(results, layout.asset(pngs["overlap"]))
    plot_delta(results, layout.asset(pngs["delta"]))
    for name, (curve, chosen) in curves.items():
        pngs[f"pr_{name}"] = f"pr_{_safe(name)}.png"
        plot_pr(curve, chosen, name, layout.asset(pngs[f"pr_{name}"]))
    for name, top in pairs.items():
        pngs[f"pairs_{name}"] = f"pairs_{_safe(name)}.png"
        plot_pairs(top, layout.asset(pngs[f"pairs_{name}"]),
                   f"{name}: top matches (threshold {results[name]['threshold']:.3f})")
    table = markdown_table(results, adjusted)
    md = (f"# Eval-overlap (contamination) report\n\nDetector: **{meta['detector']}**; training data: "
          f"`{meta['train_data']}` ({meta['train_images']} images); checkpoint: `{meta['checkpoint']}`.\n"
          "Threshold per dataset: highest recall on planted copies with precision ≥ "
          f"{meta['min_precision']}. Overlap = nearest training image scores ≥ threshold.\n\n{table}\n"
          + "".join(f"![{k}]({v})\n" for k, v in pngs.items()))
    layout.write_bytes(layout.markdown, md.encode())
    layout.write_bytes(layout.html, _html(table_html(results, adjusted), meta, pngs).encode())
    return {"results": layout.results, "report_md": layout.markdown, "report_html": layout.html,
            "pngs": [layout.asset(p) for p in pngs.values()]}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def table_html(results: dict[str, dict], adjusted: dict) -> str:
    head = ("dataset", "overlap %", "n overlap", "n all", "acc All %", "acc Clean %", "acc Overlap %",
            "All − Clean pp", "Overlap CI %", "p", "p Bonferroni", "threshold", "precision", "recall")
    rows = []
    for n, r in results.items():
        ci = f"[{100 * r['ci_overlap'][0]:.1f}, {100 * r['ci_overlap'][1]:.1f}]" if r["ci_overlap"] else "n/a"
        cells = (n, _fmt(r["overlap_pct"]), r["n_overlap"], r["n_all"], _fmt(r["acc_all"], True),
                 _fmt(r["acc_clean"], True), _fmt(r["acc_overlap"], True), _fmt(r["delta_all_minus_clean"], True),
                 ci, _fmt(r["p_value"]), _fmt(adjusted.get(n)), f"{r['threshold']:.3f}",
                 f"{r['precision']:.2f}", f"{r['recall']:.2f}")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _html(table: str, meta: dict, pngs: dict[str, str]) -> str:
    images = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(k)}"></figure>' for k, p in pngs.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Contamination report</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 6px}"
            "table{border-collapse:collapse}figure{display:inline-block;margin:8px}</style></head><body>"
            f"<h1>Eval-overlap (contamination) report</h1><p>Detector: <b>{html.escape(str(meta['detector']))}</b>; "
            f"training images: {meta['train_images']}; checkpoint: {html.escape(str(meta['checkpoint']))}; "
            f"threshold: highest recall at precision ≥ {meta['min_precision']} on planted copies.</p>"
            f"{table}{images}</body></html>\n")
