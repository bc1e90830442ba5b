"""Ray adapter of the web-archive pool extraction: one Ray task per WARC/WAT file.

Each task runs :func:`curation.web.webpool.write_file_part` and writes its own part and marker; the
driver only gathers the small markers (never the rows) and merges the stats.
"""

from __future__ import annotations

from curation.web.webpool import WebPoolConfig, write_file_part, write_stats


def run_ray(files: list[str], kind: str, out_dir: str, config: WebPoolConfig = WebPoolConfig()) -> dict:
    """Extract ``files`` (one task each) into ``out_dir``; return the merged stats by stage.

    Ray must be initialised (``pipelines.runtime.init_ray``)."""
    import ray

    extract = ray.remote(num_cpus=1, max_retries=2)(write_file_part)
    ray.get([extract.remote(uri, index, kind, out_dir, config) for index, uri in enumerate(files)])
    return write_stats(out_dir, files)
