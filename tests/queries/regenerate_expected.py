"""Regenerate tests/queries/expected/sample_build.json (the regression reference of a build from
the real sample data). Run after an intended change of the output, and commit the result:

    .venv/bin/python tests/queries/regenerate_expected.py
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

EXPECTED = Path(__file__).resolve().parent / "expected" / "sample_build.json"


def sample_build_args(manifest: dict[str, str]) -> list[str]:
    """The build the reference describes: the gensim dump, the title list, WordNet."""
    return [
        "--wiki-dump", manifest["wiki_dump"], "--titles", manifest["wiki_titles"],
        "--wordnet", manifest["wordnet_dir"], "--min-count", "20", "--runner", "local", "--quiet",
    ]  # fmt: skip


def summarize(queries_dir: Path, stats: dict) -> dict:
    """What the reference keeps: per-source counts, a digest of metadata.json, a few entries."""
    metadata = (queries_dir / "metadata.json").read_bytes()
    entries = json.loads(metadata)
    return {
        "rows": stats["rows"],
        "sources": stats["sources"],
        "dropped": stats["dropped"],
        "metadata_sha256": hashlib.sha256(metadata).hexdigest(),
        "first": entries[:5],
        "last": entries[-5:],
    }


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from pipelines.build_queries import run
    from pipelines.demo.sample_data import load_manifest

    with tempfile.TemporaryDirectory() as tmp:
        stats = run(["--out", tmp, *sample_build_args(load_manifest())])
        summary = summarize(Path(tmp) / "queries", stats)
    EXPECTED.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {EXPECTED}")


if __name__ == "__main__":
    main()
