"""Build the query list called the way Beam launchers call a pipeline file.

Beam's launchers (the Airflow Beam provider's ``BeamRunPythonPipelineOperator``, Dataflow
templates) run ``python FILE --runner=<BeamRunner> --some_option=value ...``: the runner is a Beam
runner name and option names come snake_cased. ``build_queries.py`` takes ``--runner beam
--beam-runner NAME`` and dashed flags; this file maps one onto the other, parses the same flags
(:func:`pipelines.options.add_query_list_flags`) and runs the same job
(:func:`pipelines.jobs.build_query_list`). Options that are not query-list flags (``--labels``
and other Beam pipeline options) pass through to Beam unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_queries_beam.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import jobs
from pipelines.options import add_query_list_flags, query_job_from_args
from pipelines.runtime import configure_environment


def build_parser() -> argparse.ArgumentParser:
    """The query-list flags (as ``build_queries.py`` spells them, after :func:`translate`)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_query_list_flags(p)
    return p


def _own_flags() -> set[str]:
    """Snake-cased names of the query-list flags (the Beam provider snake-cases option names)."""
    return {o[2:].replace("-", "_") for a in build_parser()._actions for o in a.option_strings
            if o.startswith("--")} - {"runner", "help"}


def translate(argv: list[str]) -> list[str]:
    """Beam-launcher argv → query-list argv (``--runner=X`` → ``--runner beam --beam-runner X``)."""
    own = _own_flags()
    out = ["--runner", "beam"]
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name == "runner":
            out += ["--beam-runner", value]
        elif name == "labels":
            continue  # Airflow's version label, meaningful only to Dataflow
        elif name in own:
            out.append(f"--{name.replace('_', '-')}{sep}{value}")
        else:
            out.append(arg)
    return out


def run(argv: list[str] | None = None) -> dict:
    """Entry point: translate the launcher's argv and build the query list."""
    configure_environment()
    args, beam_args = build_parser().parse_known_args(translate(list(sys.argv[1:] if argv is None else argv)))
    jobs.query_logging(args.quiet)
    sources, config, engine = query_job_from_args(args, beam_args)
    return jobs.build_query_list(sources, config, engine, args.out)


if __name__ == "__main__":
    run()
