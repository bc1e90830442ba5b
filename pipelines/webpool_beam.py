"""Beam adapter of the web-archive pool extraction: one element per WARC/WAT file.

A ``Reshuffle`` after ``Create`` spreads the files over the workers; each element runs
:func:`curation.web.webpool.write_file_part` (the same function the Ray tasks run, so the parts are
byte-identical); the driver merges the markers into the stats after the pipeline finishes.
"""

from __future__ import annotations

from curation.web.webpool import WebPoolConfig, write_file_part, write_stats
from pipelines.runtime import beam_pipeline_options


def run_beam(files: list[str], kind: str, out_dir: str, config: WebPoolConfig = WebPoolConfig(),
             runner: str | None = None, extra_args: list[str] | None = None) -> dict:
    """Extract ``files`` (one element each) into ``out_dir``; return the merged stats by stage."""
    import apache_beam as beam

    with beam.Pipeline(options=beam_pipeline_options(runner, extra_args)) as pipeline:
        _ = (pipeline
             | "Files" >> beam.Create(list(enumerate(files)))
             | "Spread" >> beam.Reshuffle()
             | "Extract" >> beam.MapTuple(lambda index, uri: write_file_part(uri, index, kind, out_dir, config)))
    return write_stats(out_dir, files)
