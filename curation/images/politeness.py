"""Per-host politeness that holds across the whole cluster.

Every request the download makes (robots.txt included) first takes its host's **turn** from one
limiter shared by all download workers of the run -- a Ray actor on a cluster
(:func:`pipelines.images_ray.ray_limiter`), a manager process for the local process pool, an
object in the process otherwise -- so a host sees the configured rate however many workers,
processes and nodes fetch from it. Per host (the URL's host name, lower-cased):

- **rate**: at most ``host_rate`` requests/s (``--host-rate``; the turns are spaced
  ``1/rate`` apart), or the host's ``Crawl-delay`` when robots.txt asks for more;
- **concurrency**: at most ``host_concurrency`` requests at once;
- **overrides** (``--host-limits FILE``): ``HOST RATE [CONCURRENCY]`` lines for hosts you have
  permission to fetch faster (``0``: no limit) or must fetch slower; a host matches its own
  line or a parent domain's; ``--unlimited-hosts``: hosts you run, which take no turns at all;
- **Retry-After** on 429/503: the host's next turn no sooner than that (capped);
- **backoff**: after a transient failure (429, 5xx, timeout, connection error) the host's next
  turn waits ``backoff_s * 2^(n-1)`` (±50% jitter, capped), reset by a success (not for a host
  with no limit at all: yours);
- **circuit breaker**: after ``breaker_failures`` failures in a row the host is paused for
  ``breaker_pause_s``; its requests are refused meanwhile (reject reason ``host_unavailable``,
  counted, not retried), then one probe is let through: a success closes the circuit, a
  failure opens it again.

Turns are granted as delays measured on the limiter's clock (no clock agreement between nodes is
needed). :meth:`HostBook.report` gives the per-host request counts, waits and breaker trips the
download stats show.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
from dataclasses import dataclass
from multiprocessing.managers import BaseManager
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class PolitenessConfig:
    """How hard any one host is fetched (cluster-wide)."""

    host_rate: float = 2.0  # requests per second per host, cluster-wide (0: no limit)
    host_concurrency: int = 2  # requests at once per host, cluster-wide (0: no limit)
    host_limits: str | None = None  # file of 'HOST RATE [CONCURRENCY]' lines overriding both per host (0: no limit)
    unlimited_hosts: tuple[str, ...] = ()  # hosts you run: no turns, no limit, no breaker (--serve-images adds its own)
    backoff_s: float = 1.0  # wait after a host's first transient failure; doubles with each further one
    max_backoff_s: float = 60.0  # the backoff's cap
    max_retry_after_s: float = 300.0  # Retry-After values are capped to this
    breaker_failures: int = 8  # failures in a row that pause a host (0: never)
    breaker_pause_s: float = 60.0  # how long a paused host's requests are refused before one probe
    turn_lease_s: float = 300.0  # a turn not given back this long after it starts is taken back (its worker died)

    def __post_init__(self):
        if self.host_rate < 0 or self.host_concurrency < 0:
            raise ValueError("host_rate and host_concurrency must be >= 0 (0: no limit)")

    def limits_for(self, host: str, overrides: dict[str, tuple[float, int]]) -> tuple[float, int]:
        """``(rate, concurrency)`` of ``host``: its (or a parent domain's) line of ``overrides``
        (:meth:`overrides`), else the defaults."""
        key = domain_match(host, overrides)
        return overrides[key] if key is not None else (self.host_rate, self.host_concurrency)

    def overrides(self) -> dict[str, tuple[float, int]]:
        """``unlimited_hosts`` and ``host_limits`` parsed: host -> (rate, concurrency); an error
        names the file and line."""
        out: dict[str, tuple[float, int]] = {host.lower(): (0.0, 0) for host in self.unlimited_hosts}
        if not self.host_limits:
            return out
        for number, line in enumerate(Path(self.host_limits).read_text().splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                if len(fields) not in (2, 3):
                    raise ValueError("expected HOST RATE [CONCURRENCY]")
                rate = float(fields[1])
                concurrency = int(fields[2]) if len(fields) == 3 else self.host_concurrency
                if rate < 0 or concurrency < 0:
                    raise ValueError("negative limit")
            except ValueError as err:
                raise ValueError(f"{self.host_limits}:{number}: {line.strip()!r}: {err}") from None
            out[fields[0].lower().strip(".")] = (rate, concurrency)
        return out


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def domain_match(host: str, table) -> str | None:
    """The key of ``table`` (a dict or set of hosts / domains) naming ``host`` itself or its
    nearest parent domain, or None: ``img.cdn.example`` matches ``cdn.example``."""
    labels = host.split(".")
    return next((key for key in (".".join(labels[i:]) for i in range(len(labels))) if key in table), None)


class HostUnavailable(urllib.error.URLError):
    def __init__(self, host: str, failures: int, seconds: float):
        super().__init__(f"host_unavailable: {host} paused after {failures} failures in a row "
                         f"({seconds:.0f} s left)")


class _Host:
    __slots__ = ("rate", "concurrency", "next_at", "paused_until", "leases", "failures", "open_until",
                 "requests", "waited", "trips", "refused", "lost")

    def __init__(self, rate: float, concurrency: int):
        self.rate, self.concurrency = rate, concurrency
        self.next_at = self.paused_until = self.open_until = 0.0
        self.leases: list[float] = []  # when each turn in flight is taken back if never given back
        self.failures = self.requests = self.trips = self.refused = self.lost = 0
        self.waited = 0.0


class HostBook:
    """The limiter's state and rules (no waiting, no clock of its own: ``now`` is given)."""

    def __init__(self, config: PolitenessConfig, overrides: dict[str, tuple[float, int]] | None = None,
                 seed: int = 0):
        self.config = config
        # parsed by the caller where the --host-limits file is (the driver), or here
        self.overrides = config.overrides() if overrides is None else overrides
        self.hosts: dict[str, _Host] = {}
        self.random = random.Random(seed)

    def _host(self, host: str) -> _Host:
        state = self.hosts.get(host)
        if state is None:
            state = self.hosts[host] = _Host(*self.config.limits_for(host, self.overrides))
        return state

    def acquire(self, host: str, crawl_delay: float, now: float) -> tuple[str, float]:
        """``("go", delay)``: the request may start ``delay`` s from ``now`` (the turn is taken);
        ``("busy", 0)``: the host is at its concurrency cap, ask again after a release;
        ``("refused", seconds)``: the host's circuit is open for that long."""
        h = self._host(host)
        if h.leases and min(h.leases) <= now:  # turns never given back (their worker died)
            kept = [t for t in h.leases if t > now]
            h.lost += len(h.leases) - len(kept)
            h.leases = kept
        breaker = self.config.breaker_failures
        if breaker and h.failures >= breaker:
            if now < h.open_until or h.leases:  # open, or its one probe is out
                h.refused += 1
                return "refused", max(0.0, h.open_until - now)
        if h.concurrency and len(h.leases) >= h.concurrency:
            return "busy", 0.0
        interval = max(1.0 / h.rate if h.rate else 0.0, crawl_delay)
        start = max(now, h.next_at, h.paused_until)
        h.next_at = start + interval
        h.leases.append(start + self.config.turn_lease_s)
        h.requests += 1
        h.waited += start - now
        return "go", start - now

    def release(self, host: str, outcome: str, retry_after: float | None, now: float) -> None:
        """A request of ``host`` ended: ``outcome`` "ok" (the host answered), "failed" (429,
        5xx, timeout, connection error) or "neutral" (never reached the host)."""
        h = self._host(host)
        if h.leases:
            h.leases.remove(min(h.leases))
        if outcome == "ok":
            h.failures = 0
        elif outcome == "failed":
            c = self.config
            h.failures += 1
            if h.rate or h.concurrency:  # a host with no limit at all (yours) is not backed off
                backoff = min(c.max_backoff_s, c.backoff_s * 2 ** (h.failures - 1)) * self.random.uniform(0.5, 1.5)
                h.paused_until = max(h.paused_until, now + backoff)
            if retry_after is not None:
                h.paused_until = max(h.paused_until, now + min(max(retry_after, 0.0), c.max_retry_after_s))
            if c.breaker_failures and h.failures >= c.breaker_failures:
                h.open_until = now + c.breaker_pause_s
                h.trips += 1

    def report(self, top: int = 10) -> list[dict]:
        """The ``top`` hosts by requests: requests, seconds waited for turns, breaker trips,
        refused requests, turns taken back unreturned (``lost``), their limits."""
        rows = sorted(self.hosts.items(), key=lambda kv: (-kv[1].requests, kv[0]))[:top]
        return [{"host": host, "requests": h.requests, "waited_s": round(h.waited, 1), "trips": h.trips,
                 "refused": h.refused, "lost": h.lost, "rate": h.rate or None, "concurrency": h.concurrency or None}
                for host, h in rows]


class LocalLimiter:
    """A :class:`HostBook` behind a lock, for the threads of one process (or, hosted by a
    manager process, for a local process pool): ``acquire`` blocks while the host is busy."""

    def __init__(self, config: PolitenessConfig, overrides: dict[str, tuple[float, int]] | None = None):
        self.book = HostBook(config, overrides)
        self.cond = threading.Condition()

    def acquire(self, host: str, crawl_delay: float) -> tuple[str, float]:
        with self.cond:
            while True:
                verdict = self.book.acquire(host, crawl_delay, time.monotonic())
                if verdict[0] != "busy":
                    return verdict
                self.cond.wait(1.0)

    def release(self, host: str, outcome: str, retry_after: float | None) -> None:
        with self.cond:
            self.book.release(host, outcome, retry_after, time.monotonic())
            self.cond.notify_all()

    def report(self, top: int = 10) -> list[dict]:
        with self.cond:
            return self.book.report(top)


class LimiterManager(BaseManager):
    """A manager process hosting one :class:`LocalLimiter` for a local process pool
    (``--distributor multiprocessing``): the pool's workers share it through its proxy."""


LimiterManager.register("LocalLimiter", LocalLimiter)


def limiter_key(limiter) -> tuple | None:
    """A key naming the limiter across pickling (a worker caches one opener per limiter)."""
    if limiter is None:
        return None
    token = getattr(limiter, "_token", None)  # a manager proxy
    if token is not None:
        return ("manager", str(token.address), token.id)
    actor_id = getattr(limiter, "_actor_id", None)  # a Ray actor handle
    if actor_id is not None:
        return ("ray", actor_id.hex())
    return ("object", id(limiter))


def limiter_report(limiter, top: int = 10) -> list[dict]:
    """:meth:`HostBook.report` of any kind of limiter."""
    if hasattr(limiter.report, "remote"):
        import ray

        return ray.get(limiter.report.remote(top))
    return limiter.report(top)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Turn:
    def __init__(self, turns: HostTurns, host: str):
        self.turns, self.host = turns, host

    def done(self, status: int | None, retry_after: str | None, reached: bool = True) -> None:
        """Report the request's outcome: an HTTP ``status``, or None when none came (a failure,
        unless the request never ``reached`` the host, e.g. refused by the guard first)."""
        if status is not None:
            outcome = "failed" if status == 429 or status >= 500 else "ok"
        else:
            outcome = "failed" if reached else "neutral"
        self.turns.release(self.host, outcome, parse_retry_after(retry_after) if status in (429, 503) else None)


class _NoTurn:
    def done(self, *args, **kwargs) -> None:
        pass


NO_TURN = _NoTurn()  # the turn of an unlimited host: not asked for, nothing to report


class HostTurns:
    """The worker side: takes turns from ``limiter`` (a :class:`LocalLimiter`, its manager
    proxy, or a Ray actor handle; None: a limiter of this process) and remembers each host's
    Crawl-delay (set by :class:`curation.images.robots.RespectfulHandler`)."""

    def __init__(self, config: PolitenessConfig, limiter=None):
        self.config = config
        self.limiter = limiter if limiter is not None else LocalLimiter(config)
        self.is_actor = hasattr(self.limiter, "acquire") and hasattr(self.limiter.acquire, "remote")
        self.crawl_delays: dict[str, float] = {}
        self.free = frozenset(h.lower() for h in config.unlimited_hosts)  # no turns at all (your hosts)

    def note_crawl_delay(self, url: str, seconds: float) -> None:
        self.crawl_delays[host_of(url)] = seconds

    def _call(self, method: str, *args):
        if self.is_actor:
            import ray

            return ray.get(getattr(self.limiter, method).remote(*args))
        return getattr(self.limiter, method)(*args)

    def release(self, host: str, outcome: str, retry_after: float | None) -> None:
        if self.is_actor:
            self.limiter.release.remote(host, outcome, retry_after)  # no wait for the answer
        else:
            self.limiter.release(host, outcome, retry_after)

    def turn(self, url: str) -> Turn:
        """Wait for ``url``'s host's turn (raises :class:`HostUnavailable` while its circuit is open)."""
        host = host_of(url)
        if domain_match(host, self.free) is not None:
            return NO_TURN
        verdict, seconds = self._call("acquire", host, self.crawl_delays.get(host, 0.0))
        if verdict == "refused":
            raise HostUnavailable(host, self.config.breaker_failures, seconds)
        if seconds > 0:
            time.sleep(seconds)
        return Turn(self, host)
