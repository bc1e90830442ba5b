"""Take named samples out of a finished run (:mod:`curation.images.takedown`).

    python pipelines/takedown.py --out runs/wit --urls takedown-2027-01.txt
    python pipelines/takedown.py --out runs/wit --hashes hashes.txt [--pdq-threshold 31]

``--urls``: one URL per line (exact match on the sample's URL). ``--hashes``: one hash per line,
``KIND:HEX`` (md5, sha1, sha256 of the original image's bytes; pdq of the image, matched within
``--pdq-threshold`` bits), a bare 32/40/64-digit hex being an md5/sha1/sha256. Blank lines and
``#`` comments are skipped. The matching samples are removed from the shards and held-out pairs
(only the shards holding them are rewritten, atomically), their image bytes from the run's
scratch; they are recorded in the removed-links ledger (``<out>/curation/removed/``) and the
takedown ledger (``stats/takedown.json``), and the shards' stats, the report and the datasheet
are rewritten. Rerunning a request changes nothing; rerunning it after a crash finishes it.
Prints counts only, never a URL or a hash; a run without shards, an unreadable request file or a
bad line (named by its number) is a one-line error.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script, sys.path[0] is pipelines/; the packages live one level up
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from curation.images.takedown import TakedownConfig, read_request, run_takedown
from pipelines.cli import add_config_flags, config_from_args
from storage.layout import RunLayout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the run directory (build_wit.py --out): a path or URI")
    request = p.add_mutually_exclusive_group(required=True)
    request.add_argument("--urls", help="file of URLs to take down, one per line")
    request.add_argument("--hashes", help="file of hashes to take down, one KIND:HEX per line (md5, sha1, sha256, pdq)")
    add_config_flags(p, TakedownConfig)
    p.add_argument("--pool-digests", action=argparse.BooleanOptionalAction, default=None,
                   help="the rewritten datasheet reads every pool file still unchanged since the run for its "
                        "SHA-256 (default: when the pool files total at most 4 GiB, as the run's own datasheet)")
    return p


def run(argv: list[str] | None = None) -> dict:
    """Entry point: read the request, apply it (:func:`~curation.images.takedown.run_takedown`),
    rewrite the datasheet, print a summary of counts."""
    args = build_parser().parse_args(argv)
    layout = RunLayout(args.out)
    kind, uri = ("urls", args.urls) if args.urls else ("hashes", args.hashes)
    try:
        config = config_from_args(TakedownConfig, args)
        request = read_request(uri, kind)
        summary = run_takedown(layout, request, config, digest_pool=args.pool_digests)
        datasheet = summary["datasheet"]
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"takedown: {err}") from None
    now = summary["now"]
    print(f"takedown {request.name} ({len(request.urls)} URLs, {request.identity()['hashes']} hashes named): "
          f"{summary['removed']} sample(s) removed from {len(summary['shards_rewritten'])} shard(s)"
          + ("" if now["planned"] or now["removed"] else " (already applied: nothing changed)"))
    print(f"ledger: {summary['ledger']}")
    print(f"takedown stats: {layout.stats('takedown')}; datasheet: {datasheet[1]}")
    if layout.exists(layout.contamination_report.results):  # its PNGs may show a removed training image
        print(f"note: {layout.contamination_report.root} predates this takedown: rerun "
              f"pipelines/contamination_report.py to rebuild it from the new shards")
    return summary


if __name__ == "__main__":
    run()
