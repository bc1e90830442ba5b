"""The run report: ``<curation_dir>/report.html`` + PNGs under ``<curation_dir>/report/``.

Reads what the stages left behind, nothing else:

- every ``stats/<stage>.json`` → a funnel of rows per stage and a table of reject reasons;
- the curation core's per-entry counts before/after balancing (``stats/entry_counts.png``),
  when present;
- the first final shard → a grid of sample images with their captions.

Open ``report.html`` in a browser; it only references files next to it.
"""

from __future__ import annotations

import html
import io
import json
import tarfile
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from curation.stage import write_bytes_atomic  # noqa: E402

# Stages in data-flow order; stages not listed follow in file-modification order.
STAGE_ORDER = ("read", "text", "dedup_url", "dedup_text", "match", "balance",
               "urlguard", "download", "imagecheck", "imagededup", "shards")


def read_all_stats(curation_dir: Path) -> dict[str, dict]:
    """``{stage: stats}`` for every ``stats/*.json``, in data-flow order."""
    files = list((curation_dir / "stats").glob("*.json"))
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    files.sort(key=lambda f: (rank.get(f.stem, len(rank)), f.stat().st_mtime, f.stem))
    out = {}
    for f in files:
        stats = json.loads(f.read_text())
        if isinstance(stats, dict) and {"in", "out"} <= stats.keys():
            out[f.stem] = stats
    return out


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def plot_funnel(stats: dict[str, dict], path: Path) -> None:
    """Bar per stage: rows out, stacked with rows rejected per reason."""
    stages = list(stats)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(stages)), 4.5))
    x = np.arange(len(stages))
    ax.bar(x, [stats[s]["out"] for s in stages], color="#4c72b0", label="kept")
    bottom = np.array([stats[s]["out"] for s in stages], float)
    reasons = sorted({r for s in stages for r in stats[s].get("rejected", {})})
    colours = plt.cm.tab20(np.linspace(0, 1, max(1, len(reasons))))
    for reason, colour in zip(reasons, colours):
        values = np.array([stats[s].get("rejected", {}).get(reason, 0) for s in stages], float)
        ax.bar(x, values, bottom=bottom, color=colour, label=reason)
        bottom += values
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set_ylabel("rows")
    ax.set_title("rows per stage (kept + rejected by reason)")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    _save(fig, path)


def sample_grid(shard: Path, path: Path, count: int = 16) -> list[str]:
    """A grid of the first ``count`` samples of a shard with their captions; returns captions."""
    samples: dict[str, dict] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext in ("jpg", "txt"):
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
            if len(samples) > count:
                break
    items = [s for s in samples.values() if {"jpg", "txt"} <= s.keys()][:count]
    cols = 4
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 3.0))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    captions = []
    for ax, item in zip(np.atleast_1d(axes).ravel(), items):
        caption = item["txt"].decode("utf-8", "replace")
        captions.append(caption)
        ax.imshow(Image.open(io.BytesIO(item["jpg"])).convert("RGB"))
        ax.set_title("\n".join(textwrap.wrap(caption, 28)[:3]), fontsize=7)
    _save(fig, path)
    return captions


def _stats_table(stats: dict[str, dict]) -> str:
    rows = []
    for stage, s in stats.items():
        reasons = ", ".join(f"{html.escape(r)}: {n}" for r, n in s.get("rejected", {}).items()) or "—"
        rows.append(f"<tr><td>{html.escape(stage)}</td><td>{s['in']}</td><td>{s['out']}</td><td>{reasons}</td></tr>")
    return ("<table><tr><th>stage</th><th>in</th><th>out</th><th>rejected by reason</th></tr>"
            + "".join(rows) + "</table>")


def write_report(curation_dir: str | Path) -> Path:
    """Write ``report.html`` and its PNGs for ``curation_dir``; return the HTML path."""
    root = Path(curation_dir)
    out = root / "report"
    stats = read_all_stats(root)
    parts = ["<h1>openwit curation report</h1>", f"<p>{html.escape(str(root.resolve()))}</p>"]
    if stats:
        plot_funnel(stats, out / "funnel.png")
        parts += ["<h2>Rows per stage</h2>", '<img src="report/funnel.png">', _stats_table(stats)]
    if (root / "stats" / "entry_counts.png").exists():
        parts += ["<h2>Pairs per entry, before/after balancing</h2>", '<img src="stats/entry_counts.png">']
    shards = sorted((root / "shards").glob("*.tar"))
    if shards:
        sample_grid(shards[0], out / "samples.png")
        shard_stats = root / "shards" / "stats.json"
        summary = html.escape(shard_stats.read_text()) if shard_stats.exists() else ""
        parts += ["<h2>Sample images (first shard)</h2>", '<img src="report/samples.png">',
                  f"<h2>Shards</h2><pre>{summary}</pre>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>openwit curation report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>\n")
    path = root / "report.html"
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
