"""CLI of the image stages (``curation.images.recipe``): download, check, dedup, shards.

The image half of ``pipelines/build_wit.py`` (both parse the flags of
:func:`pipelines.options.add_image_flags` and call :func:`pipelines.jobs.run_image_stages`);
runnable alone on a curation directory that holds ``selected/*.parquet``::

    python pipelines/wit_images.py --curation-dir runs/demo/curation \\
        --serve-images data/sample/images          # the sample pool's loopback server

The stage order, accounting and resume live in :mod:`curation.images.recipe`, its Ray adapter
in :mod:`pipelines.images_ray`, the loopback image server of ``--serve-images`` in
:mod:`pipelines.serve_images`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/wit_images.py` (also under `ray job submit`)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import jobs
from pipelines.images_ray import ray_map_tasks, ray_pipe_tasks
from pipelines.options import add_data_dir_flag, add_image_flags, image_config_from_args
from pipelines.runtime import configure_environment
from pipelines.serve_images import DEFAULT_HOST as LOOPBACK
from pipelines.serve_images import DEFAULT_PORT as SERVE_PORT

# the Ray adapter and the server's address stay importable from here (bench/, tests/)
__all__ = ["LOOPBACK", "SERVE_PORT", "add_arguments", "build_parser", "config_from_args", "main", "ray_map_tasks",
           "ray_pipe_tasks", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the image-stage flags to ``parser`` (:func:`pipelines.options.add_image_flags`)."""
    add_image_flags(parser)


def config_from_args(args: argparse.Namespace):
    """Typed config from parsed flags; serving images adds 127.0.0.1 to the allow-list."""
    return image_config_from_args(args)


def run(args: argparse.Namespace, curation_dir: str, until: str = "all") -> dict:
    """Run the image stages on ``curation_dir`` (holding ``selected/*.parquet``; a path or URI)
    with the parsed image flags ``args``; return the summary of
    :func:`curation.images.recipe.run_image_stages`. ``until="download"`` stops after the
    download and check (their stats written; a later run resumes from there)."""
    configure_environment()
    return jobs.run_image_stages(curation_dir, config_from_args(args), args.serve_images, args.serve_port,
                                 until=until, data_dir=getattr(args, "data_dir", None))


def build_parser() -> argparse.ArgumentParser:
    """The CLI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curation-dir", required=True, help="run dir's curation/ (holds selected/)")
    add_data_dir_flag(parser)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``python pipelines/wit_images.py --curation-dir DIR [image flags]``."""
    args = build_parser().parse_args(argv)
    summary = run(args, args.curation_dir)
    print(json.dumps(summary, indent=2))
    print(f"[wit_images] shards in {summary['shards_dir']}; report: {summary['report']}")
    return summary


if __name__ == "__main__":
    main()
