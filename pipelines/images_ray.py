"""Ray adapter of the image stages (``curation.images.recipe``): the image check on a Ray Data
actor pool and the dedup's and shards' tasks as Ray tasks spread over the nodes."""

from __future__ import annotations

import pyarrow as pa

from curation.images.check import ImageCheckConfig
from curation.images.recipe import CheckDownloadShards
from pipelines.runtime import init_ray
from storage.layout import RunLayout


def ray_check_tasks(layout: RunLayout):
    """``map_check_tasks`` on Ray Data: one block per download shard on an actor pool sized to
    the cluster's CPUs (each actor loads the checker once)."""

    def run(tasks: pa.Table, config: ImageCheckConfig) -> None:
        ray = init_ray()
        workers = max(1, min(len(tasks), int(ray.cluster_resources().get("CPU", 1))))
        blocks = [tasks.slice(i, 1) for i in range(len(tasks))]  # one block per shard: parallel, no shuffle
        ray.data.from_arrow(blocks).map_batches(
            CheckDownloadShards, fn_constructor_kwargs={"config": config, "layout": layout}, batch_size=1,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
        ).materialize()

    return run


def ray_map_tasks(fn, items: list) -> list:
    """``map_tasks`` on Ray: one task per item (1 CPU, spread over the nodes), results in item
    order. The tasks write through the run layout and are idempotent, so Ray retries a task
    whose worker or node died (``max_retries``) and the result is the same."""
    ray = init_ray()
    remote = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_call)
    return ray.get([remote.remote(fn, item) for item in items])


def _call(fn, item):
    return fn(item)
