"""A total deadline for every platform request, and cutting the requests of a job that must
stop now.

A socket timeout bounds each socket operation, not a request: a server that sends its
body one byte per second never times out, and a consumer waiting on it ignores
``--max-seconds`` and SIGTERM. Here each request runs in a ``RequestScope``: one watchdog
thread shuts the request's socket down when its deadline passes, which wakes the blocked
read at once (the request then fails, and ``HttpClient`` says why). A job runs in a
``JobScope`` on its worker thread; ``JobScope.cut()`` cuts the request in flight the same
way and refuses the next ones with ``Interrupted``.

The socket is found through the connection classes of the transport's pools
(``pool_classes()``): each request registers its connection with the scope of the thread
that sends it. Pools are per thread (``transport``), so nothing is shared.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache, partial
from typing import Any

from clearlift_cli.errors import Interrupted

_local = threading.local()

DEADLINE = "deadline"  # why a request was cut: its own deadline passed ...
STOPPING = "stopping"  # ... or the job running it was cut (the consumer is stopping)


class RequestScope:
    """One request on this thread: its connections, and why it was cut (None: it was not)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._conns: list[Any] = []  # urllib3 connections
        self._lock = threading.Lock()
        self._open = True

    @property
    def connections(self) -> list[Any]:
        with self._lock:
            return list(self._conns)

    def attach(self, conn: Any) -> None:
        with self._lock:
            self._conns.append(conn)
            if self.reason is not None:
                _shutdown(conn)

    def cut(self, reason: str) -> None:
        """Shut the request's sockets down (from any thread); the first reason is kept."""
        with self._lock:
            if not self._open or self.reason is not None:
                return
            self.reason = reason
            for conn in self._conns:
                _shutdown(conn)

    def close(self) -> None:
        with self._lock:  # from now on a late cut cannot touch a connection back in its pool
            self._open = False


class JobScope:
    """The job running on this thread. ``cut()`` (from any thread) ends its request in
    flight now and makes every later one raise ``Interrupted``."""

    def __init__(self) -> None:
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._request: RequestScope | None = None

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            request = self._request
        if request is not None:
            request.cut(STOPPING)

    def _enter(self, request: RequestScope | None) -> None:
        with self._lock:
            self._request = request
        if request is not None and self.is_cut:
            request.cut(STOPPING)


@contextmanager
def job_scope(scope: JobScope) -> Iterator[JobScope]:
    """Run the body as ``scope``'s job (requests sent on this thread belong to it)."""
    previous = getattr(_local, "job", None)
    _local.job = scope
    try:
        yield scope
    finally:
        _local.job = previous


def check_not_cut(what: str = "the job") -> None:
    """Raise ``Interrupted`` if this thread's job has been cut."""
    job = getattr(_local, "job", None)
    if job is not None and job.is_cut:
        raise Interrupted(f"{what} was cut short: the consumer is stopping")


def current_request() -> RequestScope | None:
    """The request scope this thread is in, if any."""
    return getattr(_local, "request", None)


class request_deadline:  # lower case: used like the function it replaced
    """Run one request (or one more read of a streamed answer, on ``connections``) with a
    total deadline of ``seconds``: ``with request_deadline(30) as scope: ...``. Raises
    ``Interrupted`` at once if this thread's job has been cut. (A class, not a generator
    context manager: it wraps every element of a streamed answer.)"""

    __slots__ = ("_alarm", "_job", "_outer", "scope")

    def __init__(self, seconds: float, *, connections: Iterable[Any] = ()):
        check_not_cut()
        self.scope = scope = RequestScope()
        for conn in connections:
            scope.attach(conn)
        self._job: JobScope | None = getattr(_local, "job", None)
        self._outer = current_request()
        self._alarm = _WATCHDOG.schedule(time.monotonic() + seconds, partial(scope.cut, DEADLINE))

    def __enter__(self) -> RequestScope:
        _local.request = self.scope
        if self._job is not None:
            self._job._enter(self.scope)
        return self.scope

    def __exit__(self, *exc: object) -> None:
        _WATCHDOG.cancel(self._alarm)
        self.scope.close()
        _local.request = self._outer
        if self._job is not None:
            self._job._enter(self._outer)


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        # The plain socket's shutdown, even under TLS: it wakes a read blocked in another
        # thread without touching the TLS object that thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _register(conn: Any) -> None:
    scope = getattr(_local, "request", None)
    if scope is not None:
        scope.attach(conn)


@cache
def pool_classes() -> dict[str, type]:
    """urllib3 pool classes, by scheme, whose connections register with the request scope
    of the thread that uses them (set them as a pool manager's ``pool_classes_by_scheme``)."""
    # Built on first use: the CLI does not import urllib3 until a command needs it.
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class CuttableHTTPConnection(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            _register(self)  # a cut that came while connecting takes effect now

        def request(self, *args, **kwargs) -> None:
            _register(self)
            super().request(*args, **kwargs)

    class CuttableHTTPSConnection(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            _register(self)

        def request(self, *args, **kwargs) -> None:
            _register(self)
            super().request(*args, **kwargs)

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = CuttableHTTPConnection

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CuttableHTTPSConnection

    return {"http": HTTPPool, "https": HTTPSPool}


class _Watchdog:
    """One daemon thread calling each scheduled function at its (monotonic) time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[list] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, fn: Callable[[], None]) -> list:
        entry = [when, next(self._seq), fn]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="request-deadlines", daemon=True)
                self._thread.start()
            # Woken only when this deadline comes first: otherwise the thread already waits
            # for an earlier one (waking it at every request cost a thread switch each).
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list) -> None:
        entry[2] = None  # dropped when it reaches the top of the heap

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                fn = heapq.heappop(self._heap)[2]
            if fn is not None:
                try:
                    fn()
                except Exception:  # a cut must never kill the watchdog
                    pass


_WATCHDOG = _Watchdog()

__all__ = [
    "JobScope",
    "RequestScope",
    "check_not_cut",
    "current_request",
    "job_scope",
    "pool_classes",
    "request_deadline",
]
