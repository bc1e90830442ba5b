"""The per-part pipeline's scheduling (curation.stage.windowed_pipe / process_pipe) and the
checked groups of the image stages' global steps."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

from curation.images.recipe import checked_groups
from curation.stage import pipelined_in_process, process_pipe, windowed_pipe


def prepare(part: int) -> dict:
    return {"part": part, "then": [(part, k) for k in range(part % 4)]}  # part 0, 4, 8: no follow-ups


def fetch(item: tuple[int, int]) -> dict:
    return {"item": list(item)}


def test_windowed_pipe_runs_every_follow_up_once_within_the_window():
    live, peak, lock = [0], [0], threading.Lock()
    order: list[str] = []

    def tracked(fn):
        def run(item):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            time.sleep(0.002)
            with lock:
                live[0] -= 1
            return fn(item)
        return run

    with cf.ThreadPoolExecutor(16) as pool:
        def submit(kind, fn, item):
            order.append(kind)
            return pool.submit(tracked(fn), item)

        def wait(handles):
            done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
            return [(f, f.result()) for f in done]

        results = list(windowed_pipe(submit, wait, 3)(prepare, fetch, list(range(10))))
    firsts = sorted(r["part"] for kind, r in results if kind == "first")
    thens = sorted(tuple(r["item"]) for kind, r in results if kind == "then")
    assert firsts == list(range(10))
    assert thens == sorted((p, k) for p in range(10) for k in range(p % 4))
    assert peak[0] <= 4  # the window, plus the one prepared part ahead
    first_then = order.index("then")
    assert "first" in order[first_then:]  # parts were prepared while earlier parts downloaded


def test_process_pipe_equals_the_in_process_pipe():
    def key(results):
        return sorted((kind, str(r)) for kind, r in results)

    assert key(process_pipe(2)(prepare, fetch, list(range(6)))) == key(
        pipelined_in_process(prepare, fetch, list(range(6))))


def test_checked_groups_bound_rows_and_keep_order():
    checked = [(f"c{i:02d}", n) for i, n in enumerate([5, 0, 7, 3, 9, 9, 1, 0])]
    groups = checked_groups(checked, rows=10)
    assert [f for g in groups for f in g] == [c for c, n in checked if n]  # order kept, empty parts left out
    sizes = [sum(dict(checked)[f] for f in g) for g in groups]
    assert sizes == [5, 10, 9, 10] and all(s <= 10 for s in sizes)
    assert checked_groups([("big", 25)], rows=10) == [["big"]]  # one part over the bound is its own group
