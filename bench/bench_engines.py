"""Text-side curation throughput: Ray Data vs Beam DirectRunner vs one process, same pool.

    python bench/bench_engines.py [--rows 1000000] [--files 16] [--queries PATH] [--engines ray,beam,core]
                                  [--distinct] [--parallelism N] [--max-part-rows N]

Pool: ``--rows`` rows of REAL text: every distinct real caption available offline (the sample
image pool's captions, English Wikipedia lead sentences cut to <= 60-character captions as in
bench_match.py, Spanish and French Wikipedia lead sentences, so language ID has work to do)
repeated with distinct URLs until ``--rows`` (the real set holds ~120k texts, so at 1M rows most
copies are exact text duplicates that the text dedup rejects), in ``--files`` parquet files.
``--distinct``: instead, (nearly) every caption distinct, as in a crawled pool: sliding windows
of consecutive words over the real Wikipedia lead paragraphs of the sample data (widths 10, 6,
14, 8, 12, then 9, 11, 7 words at every word offset; English, plus Spanish and French windows for 13% of the
rows so language ID still rejects some), de-duplicated, in a fixed shuffled order; no invented
text. ``--parallelism``: the engines' worker count (Beam's DirectRunner workers, Ray Data's CPUs
through ``ray.init(num_cpus=)``; default all local CPUs), so both run at equal parallelism.
Queries: ``--queries``, else runs/demo/queries/queries.parquet (of this checkout or
/work/main), else the full-size list of bench_match.py. Every stage runs: read → text filter
(rules + fastText LID) → dedup url → dedup text → match → entry counts → balance → selected
parts (+ rejects). Engines run from a cold start on all local CPUs (Ray's start-up is timed
apart); the selections are checked byte-identical (Ray vs Beam vs one process). "core" is the
same stage functions in one process without an engine, so engine overhead = wall - core.
Prints rows/s, rows/s/core and Ray/Beam (the anchor measured in the same run: Ray >= 1.0x Beam
is the goal of issue 9).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_match import full_size_queries, real_captions  # noqa: E402
from curation.text.balance import count_entries  # noqa: E402
from curation.text.config import CurationConfig, prepare_run, record_part_plan, write_entry_counts  # noqa: E402
from curation.text.dedup import mark_duplicates  # noqa: E402
from curation.text.match import MatchStage  # noqa: E402
from curation.text.pool import list_pool_files, read_counted  # noqa: E402
from curation.text.selection import (  # noqa: E402
    PART_COLUMN,
    BalanceAndPart,
    balance_inputs,
    recorded_num_parts,
    write_part,
)
from curation.text.textfilter import TextFilter  # noqa: E402
from pipelines.runtime import configure_environment, init_ray  # noqa: E402
from pipelines.demo.sample_data import load_manifest  # noqa: E402


def real_texts(manifest: dict[str, str]) -> list[str]:
    """Every distinct real text available offline, in a fixed order."""
    texts = pq.read_table(manifest["sample_pool"], columns=["text"]).column("text").to_pylist()
    texts += _all_captions(manifest)
    for key in ("wiki_summaries_es", "wiki_summaries_fr"):
        texts += [v["extract"][:200] for v in json.load(open(manifest[key], encoding="utf-8")).values()]
    return list(dict.fromkeys(t for t in texts if t))


def _all_captions(manifest: dict[str, str]) -> list[str]:
    """bench_match's Wikipedia captions, each once."""
    return list(dict.fromkeys(real_captions(manifest, 1_000_000)))


WINDOW_WIDTHS = (10, 6, 14, 8, 12, 9, 11, 7)  # words per caption window, in the order they are cut
# (the last three only reached past ~7M windows: a 10M-row pool stays >= 90% distinct)


def _paragraph_words(manifest: dict[str, str], key: str) -> list[list[str]]:
    with open(manifest[key], encoding="utf-8") as f:
        return [v["extract"].split() for v in json.load(f).values()]


def _windows(paragraphs: list[list[str]], n: int) -> list[str]:
    """Up to ``n`` distinct windows of consecutive words of ``paragraphs`` (every offset, each
    width of :data:`WINDOW_WIDTHS` in turn)."""
    out: dict[str, None] = {}
    for width in WINDOW_WIDTHS:
        for words in paragraphs:
            for start in range(len(words) - width + 1):
                out[" ".join(words[start:start + width])] = None
                if len(out) >= n:
                    return list(out)
    return list(out)


def window_texts(manifest: dict[str, str], rows: int, other_share: float = 0.13) -> list[str]:
    """``rows`` captions, nearly all distinct: sliding windows over the real Wikipedia lead
    paragraphs (English; Spanish and French for ``other_share`` of them), shuffled in a fixed
    order. Cycles (then repeats) only when the sample holds fewer windows than ``rows``."""
    other = [w for pair in zip(_paragraph_words(manifest, "wiki_summaries_es"),
                               _paragraph_words(manifest, "wiki_summaries_fr")) for w in pair]
    texts = _windows(_paragraph_words(manifest, "wiki_summaries_en"), rows - int(rows * other_share))
    texts += _windows(other, rows - len(texts))
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    return (texts * (rows // max(len(texts), 1) + 1))[:rows]


def build_pool(root: Path, manifest: dict[str, str], rows: int, files: int, distinct: bool = False) -> tuple[str, int]:
    """Pool dir of ``rows`` rows in ``files`` parquet files: the real texts repeated with
    distinct URLs (``distinct``: :func:`window_texts`, one per row). Returns (dir, number of
    distinct texts)."""
    pool_dir = root / "pool"
    pool_dir.mkdir(parents=True)
    texts = window_texts(manifest, rows) if distinct else real_texts(manifest)
    index = np.arange(rows)
    text_col = pa.array(texts).take(pa.array(index % len(texts)))
    urls = pa.array([f"http://127.0.0.1/{i // len(texts)}/{i % len(texts)}.jpg" for i in range(rows)])
    table = pa.table({"url": urls, "text": text_col})
    per_file = -(-rows // files)
    for f in range(files):
        pq.write_table(table.slice(f * per_file, per_file), pool_dir / f"pool-{f:03d}.parquet")
    return str(pool_dir), len(set(texts))


def core_run(config: CurationConfig) -> dict[str, float]:
    """The stage functions in one process, no engine, writing the same selected parts: seconds
    per stage."""
    times: dict[str, float] = {}
    layout = config.layout
    start = time.perf_counter()
    table = pa.concat_tables([read_counted(p, config.pool_format, layout, config.on_bad_file)
                              for p in list_pool_files(config.pool)], promote_options="permissive")
    times["read"] = time.perf_counter() - start
    start = time.perf_counter()
    text_filter = TextFilter(config.text)
    table = pa.concat_tables([text_filter(table.slice(i, config.batch_size))
                              for i in range(0, table.num_rows, config.batch_size)])
    times["text"] = time.perf_counter() - start
    start = time.perf_counter()
    for key in config.dedup_keys:
        table = mark_duplicates(table, key)
    times["dedup"] = time.perf_counter() - start
    start = time.perf_counter()
    stage = MatchStage(config.queries)
    times["match_build"] = time.perf_counter() - start
    start = time.perf_counter()
    table = pa.concat_tables([stage(table.slice(i, config.batch_size))
                              for i in range(0, table.num_rows, config.batch_size)])
    times["match"] = time.perf_counter() - start
    start = time.perf_counter()
    counts = count_entries(table.column("query_ids"), stage.matcher.num_queries)
    write_entry_counts(counts, layout)
    plan = record_part_plan(counts, balance_inputs(table), config)
    table = BalanceAndPart(counts, config.t, config.seed, plan["num_parts"])(table)
    times["count_balance"] = time.perf_counter() - start
    start = time.perf_counter()
    parts = table.column(PART_COLUMN).to_numpy()
    for part in range(plan["num_parts"]):
        write_part(table.filter(pa.array(parts == part)), layout, part, config.reason_stages(), config.max_part_rows)
    times["write"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in times.items()}


class PeakRss:
    """Samples the memory of this process and all its descendants (Beam's workers, Ray's raylet
    and workers) every ``interval`` s while running: the peak RSS of any one process and of their
    sum, and the peak *private* memory (RSS less the pages shared with other processes: Ray's
    object store is shared memory, mapped -- and counted in the RSS of -- every process that
    touches it) of any one process, with that process's name."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.max_process, self.max_total = interval, 0, 0
        self.max_private, self.max_private_name = 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_info()
                    name = proc.name() if proc.pid != me.pid else "bench (driver)"
                except psutil.Error:
                    continue
                total += info.rss
                self.max_process = max(self.max_process, info.rss)
                private = info.rss - getattr(info, "shared", 0)
                if private > self.max_private:
                    self.max_private, self.max_private_name = private, name
            self.max_total = max(self.max_total, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def mib(self) -> dict:
        return {"max_process_mib": self.max_process >> 20, "max_total_mib": self.max_total >> 20,
                "max_private_mib": self.max_private >> 20, "max_private_process": self.max_private_name}


def _selection_bytes(curation: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((curation / "selected").glob("part-*.parquet"))}


def default_queries() -> str | None:
    """runs/demo/queries/queries.parquet of this checkout, else of /work/main, if built."""
    here = Path(__file__).resolve().parent.parent
    for root in (here, Path("/work/main")):
        path = root / "runs" / "demo" / "queries" / "queries.parquet"
        if path.exists():
            return str(path)
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--queries", default=None)
    parser.add_argument("--engines", default="ray,beam,core", help="comma list of ray, beam, core (run in that order)")
    parser.add_argument("--distinct", action="store_true",
                        help="distinct captions: sliding windows of the sample's Wikipedia paragraphs")
    parser.add_argument("--parallelism", type=int, default=None, help="engine workers (default: all local CPUs)")
    parser.add_argument("--max-part-rows", type=int, default=None, help="selection part bound (default: the config's)")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    configure_environment()
    manifest = load_manifest()
    root = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        # built in a child process: the pool's Python strings (GBs at 10M rows) never inflate
        # this process, the engines' driver, whose memory is measured
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool_maker:
            pool, distinct = pool_maker.submit(build_pool, root, manifest, args.rows, args.files, args.distinct).result()
        queries = args.queries or default_queries()
        if queries is None:
            entries, _ = full_size_queries(manifest)
            queries = str(root / "queries.parquet")
            pq.write_table(pa.table({"query_id": np.arange(len(entries)), "query": entries}), queries)
        rows = sum(pq.read_metadata(p).num_rows for p in Path(pool).glob("*.parquet"))
        bound = {} if args.max_part_rows is None else {"max_part_rows": args.max_part_rows}
        configs = {name: CurationConfig(queries=queries, pool=(pool,), curation_dir=str(root / name / "curation"),
                                        parallelism=args.parallelism, **bound)
                   for name in engines}
        cpus = args.parallelism or os.cpu_count()
        walls: dict[str, float] = {}
        phases: dict[str, dict] = {}
        loads: dict[str, list[float]] = {}
        rss: dict[str, PeakRss] = {}
        for name in engines:
            loads[name] = [round(x, 2) for x in os.getloadavg()]
            prepare_run(configs[name])
            with PeakRss() as rss[name]:
                if name == "beam":
                    from pipelines.curation_beam import run_beam

                    start = time.perf_counter()
                    run_beam(configs[name])
                    walls[name] = time.perf_counter() - start
                elif name == "ray":
                    start = time.perf_counter()
                    try:
                        ray = init_ray(num_cpus=args.parallelism)
                    except Exception as err:  # a loaded machine can time Ray's start-up out: once more
                        print(f"[bench] Ray start-up failed ({err}); retrying", file=sys.stderr)
                        ray = init_ray(num_cpus=args.parallelism)
                    walls["ray_startup"] = time.perf_counter() - start
                    from pipelines.curation_ray import run_ray

                    start = time.perf_counter()
                    phases["ray"] = run_ray(configs[name])
                    walls[name] = time.perf_counter() - start
                    ray.shutdown()
                else:
                    start = time.perf_counter()
                    phases["core"] = core_run(configs[name])
                    walls[name] = time.perf_counter() - start
        selections = {name: _selection_bytes(root / name / "curation") for name in engines}
        first = selections[engines[0]]
        selected = {name: sum(pq.read_metadata(root / name / "curation" / "selected" / p).num_rows for p in sel)
                    for name, sel in selections.items()}
        result = {
            "pool_rows": rows, "distinct_texts": distinct, "queries": queries, "cpus": cpus,
            "load_average_before": loads, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "identical_selection": all(sel == first and len(sel) == recorded_num_parts(configs[name].layout)
                                       for name, sel in selections.items()),
            "parts": recorded_num_parts(configs[engines[0]].layout),
            "selected_rows": selected,
            "wall_s": {k: round(v, 2) for k, v in walls.items()},
            "rows_per_s": {n: round(rows / walls[n]) for n in engines},
            "rows_per_s_per_core": {n: round(rows / walls[n] / (1 if n == "core" else cpus)) for n in engines},
            "phases_s": phases,
            "peak_rss": {n: r.mib() for n, r in rss.items()},
        }
        if "ray" in walls and "beam" in walls:
            result["ray_over_beam_throughput"] = round(walls["beam"] / walls["ray"], 3)
        print(json.dumps(result, indent=2))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
