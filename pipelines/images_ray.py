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


def ray_limiter(config):
    """The run's host limiter (:mod:`curation.images.politeness`) as a Ray actor every download
    task shares: turns granted in one asyncio loop (a busy host's callers wait there, not in a
    thread each; up to 10,000 calls at once -- 156 download tasks of 64 threads -- before a
    release would queue behind waiting turns); restarted if its node dies (its state then
    starts afresh)."""
    ray = init_ray()
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000)(_HostLimiterActor)
    return actor.remote(config)


class _HostLimiterActor:
    def __init__(self, config):
        from curation.images.politeness import HostBook

        self.book = HostBook(config)
        self.events: dict = {}

    async def acquire(self, host: str, crawl_delay: float):
        import asyncio
        import time

        while True:
            verdict = self.book.acquire(host, crawl_delay, time.monotonic())
            if verdict[0] != "busy":
                return verdict
            event = self.events.setdefault(host, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def release(self, host: str, outcome: str, retry_after):
        import time

        self.book.release(host, outcome, retry_after, time.monotonic())
        event = self.events.pop(host, None)
        if event is not None:
            event.set()

    async def report(self, top: int = 10):
        return self.book.report(top)


def _call(fn, item):
    return fn(item)
