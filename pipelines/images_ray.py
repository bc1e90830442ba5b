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
    task shares: turns granted in an asyncio loop (a busy host's callers wait there, not in a
    thread each; up to 10,000 at once), releases and reports in a concurrency group of their
    own (never queued behind waiting turns); the ``--host-limits`` file read here, on the
    driver; restarted if its node dies (its state then starts afresh)."""
    ray = init_ray()
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000,
                       concurrency_groups={"control": 64})(_limiter_class())
    return actor.remote(config, config.overrides())


def _limiter_class():
    import ray

    class HostLimiter:
        """The book behind a thread lock (the control group runs in a thread of its own); a
        waiting turn is woken through its own event loop (``call_soon_threadsafe``)."""

        def __init__(self, config, overrides):
            import threading

            from curation.images.politeness import HostBook

            self.book = HostBook(config, overrides)
            self.lock = threading.Lock()
            self.waiting: dict = {}  # host -> [(loop, event)]

        async def acquire(self, host: str, crawl_delay: float):
            import asyncio
            import time

            while True:
                with self.lock:
                    verdict = self.book.acquire(host, crawl_delay, time.monotonic())
                    if verdict[0] != "busy":
                        return verdict
                    event = asyncio.Event()
                    self.waiting.setdefault(host, []).append((asyncio.get_running_loop(), event))
                try:  # woken by a release; unreturned turns' leases are checked at least every second
                    await asyncio.wait_for(event.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass

        @ray.method(concurrency_group="control")
        async def release(self, host: str, outcome: str, retry_after):
            import time

            with self.lock:
                self.book.release(host, outcome, retry_after, time.monotonic())
                waiters = self.waiting.pop(host, [])
            for loop, event in waiters:
                loop.call_soon_threadsafe(event.set)

        @ray.method(concurrency_group="control")
        async def report(self, top: int = 10):
            with self.lock:
                return self.book.report(top)

    return HostLimiter


def _call(fn, item):
    return fn(item)
