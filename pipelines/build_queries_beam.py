"""`pipelines/build_queries.py` called the way Beam launchers call a pipeline file.

Beam's launchers (the Airflow Beam provider's ``BeamRunPythonPipelineOperator``, Dataflow
templates) run ``python FILE --runner=<BeamRunner> --some_option=value ...``: the runner is a Beam
runner name and option names come snake_cased. ``build_queries.py`` takes ``--runner beam
--beam-runner NAME`` and dashed flags; this file maps one onto the other and calls its
``run``. Options that are not ``build_queries`` flags (``--labels`` and other Beam pipeline
options) pass through to Beam unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/build_queries_beam.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines import build_queries

# snake_cased flags of build_queries.py (the Beam provider snake-cases option names)
_OWN_FLAGS = {"beam_temp_dir", "ray_address", "wiki_dump", "unigram_counts", "min_count", "min_bigram_count",
              "pmi_threshold", "max_bigrams", "min_views", "keep_case", "wordnet_all_lemmas", "batch_size"}


def translate(argv: list[str]) -> list[str]:
    """Beam-launcher argv → build_queries argv (``--runner=X`` → ``--runner beam --beam-runner X``)."""
    out = ["--runner", "beam"]
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name == "runner":
            out += ["--beam-runner", value]
        elif name == "labels":
            continue  # Airflow's version label, meaningful only to Dataflow
        elif name in _OWN_FLAGS:
            out.append(f"--{name.replace('_', '-')}{sep}{value}")
        else:
            out.append(arg)
    return out


def run(argv: list[str] | None = None) -> dict:
    """Entry point: translate the launcher's argv and build the query list."""
    return build_queries.run(translate(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    run()
