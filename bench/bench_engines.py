"""Ray vs Beam wall time of the text-side curation on the same pool, and where the time goes.

    python bench/bench_engines.py [--copies 3] [--queries PATH]

Pool: the sample pool (manifest key ``sample_pool``) repeated ``--copies`` times with distinct
URLs, plus English/Spanish Wikipedia sentences (so language ID and dedup have work to do).
Queries: ``--queries``, else runs/demo/queries/queries.parquet, else the full-size list of
bench_match.py. Both engines run from a cold start on all local CPUs (Ray's start-up is timed
apart); their selections are checked byte-identical. "Core" is the same stage functions run in
one process without an engine, so engine overhead = wall - core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_match import full_size_queries, real_captions  # noqa: E402
from curation.balance import Balancer, count_entries  # noqa: E402
from curation.config import CurationConfig, prepare_run  # noqa: E402
from curation.dedup import mark_duplicates  # noqa: E402
from curation.match import MatchStage  # noqa: E402
from curation.pool import read_pool_file  # noqa: E402
from curation.textfilter import TextFilter  # noqa: E402
from pipelines.runtime import configure_environment, init_ray  # noqa: E402
from pipelines.demo.sample_data import load_manifest  # noqa: E402


def build_pool(root: Path, manifest: dict[str, str], copies: int) -> str:
    """Pool dir: the sample pool x copies (distinct URLs) + Wikipedia en/es sentences."""
    pool_dir = root / "pool"
    pool_dir.mkdir(parents=True)
    sample = pq.read_table(manifest["sample_pool"]).select(["url", "text"])
    for i in range(copies):
        urls = [f"{u}?copy={i}" for u in sample.column("url").to_pylist()]
        pq.write_table(sample.set_column(0, "url", pa.array(urls)), pool_dir / f"sample-{i}.parquet")
    en = real_captions(manifest, 20_000)
    es = [v["extract"][:120] for v in json.load(open(manifest["wiki_summaries_es"])).values()][:3_000]
    texts = en + es
    urls = [f"http://127.0.0.1/wiki/{i}.jpg" for i in range(len(texts))]
    pq.write_table(pa.table({"url": urls, "text": texts}), pool_dir / "wiki.parquet")
    return str(pool_dir)


def core_seconds(config: CurationConfig) -> dict[str, float]:
    """The stage functions in one process, no engine: seconds per stage."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    tables = [read_pool_file(str(p)) for p in sorted(Path(config.pool[0]).glob("*.parquet"))]
    table = pa.concat_tables(tables)
    times["read"] = time.perf_counter() - start
    start = time.perf_counter()
    table = pa.concat_tables([TextFilter(config.text)(table.slice(i, config.batch_size))
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
    table = stage(table)
    times["match"] = time.perf_counter() - start
    start = time.perf_counter()
    counts = count_entries(table.column("query_ids"), stage.matcher.num_queries)
    Balancer(counts, config.t, config.seed)(table)
    times["count_balance"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--queries", default=None)
    args = parser.parse_args(argv)
    configure_environment()
    manifest = load_manifest()
    root = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        pool = build_pool(root, manifest, args.copies)
        queries = args.queries
        if queries is None:
            entries, _ = full_size_queries(manifest)
            queries = str(root / "queries.parquet")
            pq.write_table(pa.table({"query_id": np.arange(len(entries)), "query": entries}), queries)
        rows = sum(pq.read_metadata(p).num_rows for p in Path(pool).glob("*.parquet"))
        configs = {name: CurationConfig(queries=queries, pool=(pool,), curation_dir=str(root / name / "curation"))
                   for name in ("beam", "ray")}
        walls: dict[str, float] = {}
        from pipelines.curation_beam import run_beam

        prepare_run(configs["beam"])
        start = time.perf_counter()
        run_beam(configs["beam"])
        walls["beam"] = time.perf_counter() - start
        start = time.perf_counter()
        ray = init_ray()
        walls["ray_startup"] = time.perf_counter() - start
        from pipelines.curation_ray import run_ray

        prepare_run(configs["ray"])
        start = time.perf_counter()
        ray_phases = run_ray(configs["ray"])
        walls["ray"] = time.perf_counter() - start
        ray.shutdown()
        same = all((root / "ray" / "curation" / "selected" / p.name).read_bytes() == p.read_bytes()
                   for p in (root / "beam" / "curation" / "selected").glob("part-*.parquet"))
        selected = {name: sum(pq.read_metadata(p).num_rows for p in (root / name / "curation" / "selected").glob("*.parquet"))
                    for name in configs}
        result = {
            "pool_rows": rows, "cpus": os.cpu_count(), "identical_selection": same, "selected_rows": selected,
            "wall_s": {k: round(v, 2) for k, v in walls.items()},
            "rows_per_s": {"beam": round(rows / walls["beam"]), "ray": round(rows / walls["ray"])},
            "ray_over_beam": round(walls["ray"] / walls["beam"], 2),
            "ray_phases_s": ray_phases,
            "core_s_one_process": core_seconds(configs["beam"]),
        }
        print(json.dumps(result, indent=2))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
