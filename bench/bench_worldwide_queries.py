"""Worldwide query lists (issue 24): build time per language, from the sample data's sources.

    python bench/bench_worldwide_queries.py [--languages en es fr zh ja th] [--runner ray|beam]

Each language's list is built alone (``pipelines/build_queries.py --sample --language CODE``,
one process, the default engine) into a fresh directory, so its time is the whole build: reading
and counting its sources (en: the English sample dump + word counts + titles + WordNet; es, fr:
their Wikipedia lead paragraphs, counted for bigrams, + wordfreq's frequency list; zh, ja: wordfreq;
th: pythainlp's corpus counts, Thai Wikipedia titles and Thai WordNet), selecting with the caps,
writing. Prints seconds and entries per language, and the entries per second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", nargs="+", default=["en", "es", "fr", "zh", "ja", "th"])
    parser.add_argument("--runner", default=None, help="build_queries.py --runner (default: its own)")
    args = parser.parse_args(argv)
    result = {}
    with tempfile.TemporaryDirectory(prefix="ow-bq-") as tmp:
        for code in args.languages:
            out = Path(tmp) / code
            command = [sys.executable, "pipelines/build_queries.py", "--out", str(out), "--sample", "--language", code,
                       "--quiet", *(["--runner", args.runner] if args.runner else [])]
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                raise RuntimeError(f"{code}: build_queries failed: {done.stderr[-2000:]}")
            stats = json.loads((out / "queries" / "stats.json").read_text())
            rows = stats["by_language"][code]
            result[code] = {"seconds": round(seconds, 1), "entries": stats["rows"],
                            "entries_per_s": round(stats["rows"] / seconds),
                            "sources": {k: v for k, v in rows.get("counts", rows.get("sources", {})).items()}
                            if isinstance(rows.get("counts", rows.get("sources")), dict) else None}
            print(f"{code}: {stats['rows']:,} entries in {seconds:.1f} s", flush=True)
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
