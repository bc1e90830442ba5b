"""(Re)write the datasheet of a finished run from its files (:mod:`curation.datasheet`).

    python pipelines/datasheet.py --out runs/wit [--no-pool-digests]

Writes ``<out>/datasheet.json`` and ``<out>/datasheet.md`` (byte-identical when the run's files
have not changed) and prints their paths. ``--out`` may be an fsspec URI (``s3://``…). A missing
run dir, or one whose curation wrote no stage ledger, is a one-line error.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script, sys.path[0] is pipelines/; the packages live one level up
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from curation.datasheet import write_datasheet
from storage.layout import RunLayout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the run directory (build_wit.py --out): a path or URI")
    p.add_argument("--pool-digests", action=argparse.BooleanOptionalAction, default=True,
                   help="read every pool file still unchanged since the run for its SHA-256 "
                        "(--no-pool-digests: a pool too large to read again)")
    return p


def run(argv: list[str] | None = None) -> tuple[str, str]:
    """Entry point: check the run dir, write its datasheet, print the two paths (JSON, markdown)."""
    args = build_parser().parse_args(argv)
    layout = RunLayout(args.out)
    if not layout.exists(layout.root):
        raise SystemExit(f"datasheet: no run directory at {args.out}")
    try:
        paths = write_datasheet(layout, digest_pool=args.pool_digests)
    except FileNotFoundError as err:
        raise SystemExit(f"datasheet: {err}") from None
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    run()
