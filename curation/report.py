"""The run report: ``<out>/curation/report.html`` + PNGs under ``<out>/curation/report/``.

Reads what the stages left behind, nothing else:

- every ``stats/<stage>.json`` → a funnel of rows per stage and a table of reject reasons (an
  online-balanced ``balance`` stage says that training balances per epoch, and epoch 0's size);
- the curation core's per-entry counts before/after balancing (``stats/entry_counts.png``),
  when present;
- the first final shard → a grid of sample images with their captions;
- a worldwide selection's languages (``stats/summary.json`` ``by_language``: t, entries, pairs);
- a link to the run's datasheet (``<out>/datasheet.md``) when it is written.

Open ``report.html`` in a browser; it only references files next to it.
"""

from __future__ import annotations

import html
import io
import posixpath
import tarfile
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from curation.stage import IMAGE_STAGES, TEXT_STAGES  # noqa: E402
from storage.layout import RunLayout  # noqa: E402

STAGE_ORDER = TEXT_STAGES + IMAGE_STAGES  # the stage registry's data-flow order


def read_all_stats(layout: RunLayout) -> dict[str, dict]:
    """``{stage: stats}`` for every ``stats/*.json`` holding a stage ledger, in data-flow order
    (stages outside the registry follow by name)."""
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    found = {}
    for uri in layout.list(layout.stats_dir, ".json"):
        stats = layout.read_json(uri)
        if isinstance(stats, dict) and {"in", "out"} <= stats.keys():
            found[uri.rsplit("/", 1)[-1].removesuffix(".json")] = stats
    return {s: found[s] for s in sorted(found, key=lambda s: (rank.get(s, len(rank)), s))}


def _save(fig, layout: RunLayout, uri: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    layout.write_bytes(uri, buffer.getvalue())


def plot_funnel(stats: dict[str, dict], layout: RunLayout, uri: str) -> None:
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
    _save(fig, layout, uri)


def sample_grid(layout: RunLayout, shard: str, uri: str, count: int = 16) -> list[str]:
    """A grid of the first ``count`` samples of a shard with their captions; returns captions."""
    samples: dict[str, dict] = {}
    with layout.open(shard) as f, tarfile.open(fileobj=f, mode="r|") as tar:
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
    _save(fig, layout, uri)
    return captions


def online_balance_note(ledger: dict) -> str:
    """What an online-balanced ``balance`` ledger means (its ``mode``/``epoch0_pairs`` extras)."""
    return (f"none dropped: online balancing, training draws a balanced sample each epoch "
            f"(epoch 0, the offline draw: {ledger['epoch0_pairs']:,} pairs)")


def _stats_table(stats: dict[str, dict]) -> str:
    rows = []
    for stage, s in stats.items():
        reasons = ", ".join(f"{html.escape(r)}: {n}" for r, n in s.get("rejected", {}).items()) or "—"
        if s.get("mode") == "online":
            reasons = html.escape(online_balance_note(s))
        rows.append(f"<tr><td>{html.escape(stage)}</td><td>{s['in']}</td><td>{s['out']}</td><td>{reasons}</td></tr>")
    return ("<table><tr><th>stage</th><th>in</th><th>out</th><th>rejected by reason</th></tr>"
            + "".join(rows) + "</table>")


def _languages_table(languages: dict[str, dict]) -> str:
    columns = ("t", "entries", "entries_matched", "entries_selected", "matches", "pairs_selected")
    rows = "".join(f"<tr><td>{html.escape(lang)}</td>" + "".join(f"<td>{v.get(c, '')}</td>" for c in columns) + "</tr>"
                   for lang, v in languages.items())
    return "<table><tr><th>language</th>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" + rows + "</table>"


def write_report(layout: RunLayout) -> str:
    """Write ``report.html`` and its PNGs for the run's curation dir; return the HTML's URI."""
    stats = read_all_stats(layout)
    parts = ["<h1>openwit curation report</h1>", f"<p>{html.escape(layout.curation)}</p>"]
    if layout.exists(layout.datasheet_md):  # at the run's root, next to curation/
        link = html.escape(posixpath.relpath(layout.datasheet_md, layout.curation))
        parts.append(f"<p>Datasheet (sources, settings, safety, what a publisher must fill in): "
                     f"<a href='{link}'>{link}</a></p>")
    if stats:
        plot_funnel(stats, layout, layout.report_asset("funnel.png"))
        parts += ["<h2>Rows per stage</h2>", f'<img src="{layout.report_link(layout.report_asset("funnel.png"))}">', _stats_table(stats)]
    languages = (layout.read_json(layout.summary) if layout.exists(layout.summary) else {}).get("by_language")
    if languages:  # a worldwide selection (MetaCLIP 2): each language's t, entries and pairs
        parts += ["<h2>Languages</h2>", _languages_table(languages)]
    if layout.exists(layout.entry_counts_plot):
        parts += ["<h2>Pairs per entry, before/after balancing</h2>", f'<img src="{layout.report_link(layout.entry_counts_plot)}">']
    shards = layout.list(layout.shards_dir, ".tar")
    if shards:
        sample_grid(layout, shards[0], layout.report_asset("samples.png"))
        summary = html.escape(layout.read_bytes(layout.shard_stats).decode()) if layout.exists(layout.shard_stats) else ""
        parts += ["<h2>Sample images (first shard)</h2>", f'<img src="{layout.report_link(layout.report_asset("samples.png"))}">',
                  f"<h2>Shards</h2><pre>{summary}</pre>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>openwit curation report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>\n")
    layout.write_bytes(layout.report_html, page.encode("utf-8"))
    return layout.report_html
