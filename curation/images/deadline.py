"""Hard limits on one HTTP request, whatever the server does: a total deadline and a maximum size.

urllib (and so img2dataset) applies its ``timeout`` to each socket operation, not to the
request: a server that sends one byte every few seconds (a tarpit), or drips its headers, or
sends an endless body, holds the request -- and the download task's thread and CPU slot --
without end; and img2dataset reads the whole body into memory. The guarded opener
(:mod:`curation.images.fetch`) closes both holes with this module:

- :class:`Ticket`: a deadline for one request *and its redirect chain* (the first request sets
  it; each redirect inherits it). The connection connects within the time left and arms it
  with its socket; one watchdog thread per process (:data:`WATCH`) shuts the socket down when
  the deadline passes, which ends any blocked header or body read at once. The request then fails as ``timeout: ...`` (reject
  reason ``timeout``), never as a short body taken for a whole one.
- :func:`read_body`: the body read inside the opener, at most ``max_bytes`` (a larger
  ``Content-Length`` is refused before reading; a body that keeps coming is cut at the bound):
  ``too_large: ...`` (reject reason ``too_large``). Bodies of non-2xx answers are read up to a
  small bound and dropped (urllib's redirect handler would otherwise read them whole).

Not covered: the DNS lookup (``getaddrinfo`` cannot be interrupted; it runs before the socket
exists and is bounded by the resolver's own timeout), and a TLS handshake, whose reads are bounded
by the time left when the connection started, not by the watchdog (TLS detaches the plain socket
the watchdog would shut down).
"""

from __future__ import annotations

import heapq
import io
import itertools
import socket
import threading
import time
import urllib.error
import urllib.response
from dataclasses import dataclass

ERROR_BODY_BYTES = 64 * 1024  # what is read of a non-2xx answer's body (then dropped)
CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """Per-request limits of one opener."""

    deadline_s: float = 10.0  # total time for a request and its redirects: connect, headers, body
    max_bytes: int = 20_000_000  # largest body accepted
    truncate: bool = False  # a longer body is cut to max_bytes (robots.txt) instead of refused


class RequestTimeout(urllib.error.URLError):
    def __init__(self, url: str, deadline_s: float):
        super().__init__(f"timeout: {url} not complete within its {deadline_s:g} s deadline")


class TooLarge(urllib.error.URLError):
    def __init__(self, url: str, size: str, max_bytes: int):
        super().__init__(f"too_large: {url} body {size} over the {max_bytes:,}-byte limit")


class Ticket:
    """The deadline of one request chain; :meth:`arm` registers the socket to shut down at it."""

    def __init__(self, deadline: float, deadline_s: float):
        self.deadline, self.deadline_s = deadline, deadline_s
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def arm(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once when it already passed); each arm has
        its own watch entry at the deadline of that moment."""
        with self._lock:
            self._socket = sock
            late = self.remaining() <= 0
        if late:
            self.expire()
        else:
            WATCH.add(self)

    def disarm(self) -> None:
        with self._lock:
            self._socket = None

    def extend(self, seconds: float) -> None:
        """Move the deadline later (time a redirect waited for its host's turn is not the
        network's); the socket armed next is watched until the new deadline."""
        with self._lock:
            self.deadline += seconds

    def expire(self) -> None:
        """At a watch entry's time: shut the armed socket down if the deadline has passed.
        Nothing armed (between hops, or done) or a deadline moved later: nothing to do, and
        ``expired`` stays False (it means: a socket was cut at the deadline)."""
        with self._lock:
            if self._socket is None or self.remaining() > 0:
                return
            self.expired = True
            sock, self._socket = self._socket, None
        if sock is not None:
            try:  # the plain socket's shutdown, also under TLS: any blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _Watch:
    """One daemon thread per process expiring tickets at their deadlines."""

    def __init__(self):
        self._heap: list[tuple[float, int, Ticket]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, ticket: Ticket) -> None:
        with self._cond:
            heapq.heappush(self._heap, (ticket.deadline, next(self._order), ticket))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="openwit-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, ticket = heapq.heappop(self._heap)
            ticket.expire()


WATCH = _Watch()


def ticket_for(request, limits: FetchLimits, waited: float = 0.0) -> Ticket:
    """The request chain's ticket: inherited by a redirect (set on it by the redirect
    handler; its deadline moved by the ``waited`` seconds of a turn), else a new one from now
    (taken after the host's turn: waiting for a turn is politeness, not a slow server)."""
    ticket = getattr(request, "openwit_ticket", None)
    if ticket is not None:
        if waited > 0:
            ticket.extend(waited)
    else:
        ticket = Ticket(time.monotonic() + limits.deadline_s, limits.deadline_s)
        request.openwit_ticket = ticket
    return ticket


def read_body(response, limits: FetchLimits, url: str, ticket: Ticket):
    """Read ``response``'s body now, bounded (module docstring), and return a response that
    replays it. Raises :class:`TooLarge` or :class:`RequestTimeout`."""
    ok = 200 <= response.status < 300
    bound = limits.max_bytes if ok else ERROR_BODY_BYTES
    length = response.headers.get("Content-Length")
    if ok and not limits.truncate and length and length.isdigit() and int(length) > bound:
        response.close()
        raise TooLarge(url, f"of {int(length):,} bytes (Content-Length)", bound)
    chunks, size = [], 0
    try:
        while size <= bound:
            chunk = response.read(min(CHUNK, bound + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception as err:  # a socket error, http.client's IncompleteRead, ...
        if ticket.expired:
            raise RequestTimeout(url, ticket.deadline_s) from err
        if isinstance(err, urllib.error.URLError):
            raise
        raise urllib.error.URLError(f"body not read: {err!r}") from err
    finally:
        response.close()
    if ticket.expired:  # a body cut by the deadline is never taken for a whole one
        raise RequestTimeout(url, ticket.deadline_s)
    body = b"".join(chunks)
    if size > bound:
        if ok and not limits.truncate:
            raise TooLarge(url, "over", bound)
        body = body[:bound]
    replay = urllib.response.addinfourl(io.BytesIO(body), response.headers, response.url, response.status)
    replay.msg = response.msg
    return replay
