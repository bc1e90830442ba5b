"""Ray adapter of the image stages (``curation.images.recipe``): the per-part pipeline (a task
per selection part, then a task per download shard: fetch + check) and the global steps'
tasks (digests, dedup, decontamination, shards) as Ray tasks spread over the nodes."""

from __future__ import annotations

from pipelines.runtime import init_ray

TASK_NAMES = {"first": "prepare_part", "then": "download_shard"}  # process titles: ray::download_shard


def ray_pipe_tasks(window: int | None = None, attempts: int = 4):
    """``pipe`` on Ray (:func:`curation.stage.windowed_pipe`): every task 1 CPU, spread over the
    nodes, tried up to ``attempts`` times when its worker or node dies or it raises (the tasks
    are idempotent: a retry finds what the lost try finished); at most ``window`` in flight
    (default: twice the cluster's CPUs), so a 400M-row run never queues 400k tasks at once."""
    from curation.stage import windowed_pipe

    ray = init_ray()
    size = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1, max_retries=max(0, attempts - 1), retry_exceptions=True,
                        scheduling_strategy="SPREAD")(_call)

    def submit(kind: str, fn, item):
        return remote.options(name=TASK_NAMES[kind]).remote(fn, item)

    def wait(handles: list) -> list:
        done, _ = ray.wait(handles, num_returns=1)
        return [(ref, ray.get(ref)) for ref in done]

    return windowed_pipe(submit, wait, size)


def ray_map_tasks(fn, items: list) -> list:
    """``map_tasks`` on Ray: one task per item (1 CPU, spread over the nodes), results in item
    order. The tasks write through the run layout and are idempotent, so Ray retries a task
    whose worker or node died (``max_retries``) and the result is the same."""
    ray = init_ray()
    remote = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_call)
    return ray.get([remote.remote(fn, item) for item in items])


def _call(fn, item):
    return fn(item)
