"""The sandbox: HTTP servers on loopback that behave like the platforms on the wire.

Each platform has a ``PlatformApp`` subclass (``sandbox/google.py`` etc.) that answers
requests in the platform's own shapes. ``SandboxServer`` runs one app on
``127.0.0.1:<free port>`` in a background thread. Every app has:

- ``tokens``: a ``TokenAuthority`` that issues, expires, refreshes and revokes tokens;
- ``faults``: a ``FaultPlan`` to inject latency, error statuses, timeouts, malformed or
  truncated bodies, HTML pages and connection resets, for the next N matching requests;
- ``requests``: a log of every request received (method, path, query, headers, body) so
  tests can count calls and check what was sent.

Data is generated deterministically from the account id (``sandbox/data.py``), so tests
can compute exactly what the warehouse must hold.
"""

from __future__ import annotations

import gzip
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes/str sent as they are
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class Fault:
    """One injected fault. ``kind``: ``status`` (answer ``status`` with ``body``),
    ``latency`` (wait ``seconds`` then answer normally), ``timeout`` (wait ``seconds``,
    default 30, then close), ``truncate`` (cut the real body in half), ``malformed``
    (``{"not json``), ``html`` (an HTML error page with ``status``), ``reset`` (close the
    socket without answering), ``redirect`` (``status``, default 302, to ``location``, e.g.
    another host), ``oversize`` (a 200 body of ``size`` bytes, sent in chunks without building
    it; with ``Content-Length`` unless ``chunked``), ``drop`` (handle the request, then close
    the connection halfway through the answer's announced body), ``slow_body`` (the real
    answer, its headers and first ``size`` bytes at once, then the rest one byte every
    ``seconds``, default 1: a per-read timeout never fires). ``path`` is a regex matched
    against the request path."""

    kind: str
    path: str = ".*"
    times: int = 1
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    location: str = ""
    size: int = 0
    chunked: bool = False


class FaultPlan:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.latency_seconds = 0.0  # added to every request

    def add(self, kind: str, *, path: str = ".*", times: int = 1, **kw: Any) -> Fault:
        fault = Fault(kind=kind, path=path, times=times, **kw)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.latency_seconds = 0.0

    def take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times != 0 and re.search(fault.path, path):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None


@dataclass
class Token:
    value: str
    expires_at: float | None  # epoch seconds; None never expires
    revoked: bool = False
    refresh: bool = False


class TokenAuthority:
    """Issues and checks tokens. Access tokens expire after ``ttl`` seconds (None: never);
    refresh tokens never expire unless revoked. ``clock`` returns epoch seconds."""

    def __init__(self, prefix: str, clock: Callable[[], float] = time.time):
        self.prefix = prefix
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self.refreshes = 0

    def _new(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{secrets.token_urlsafe(24)}"

    def issue(self, ttl: float | None = 3600.0) -> tuple[str, str]:
        """A fresh (access token, refresh token) pair."""
        access, refresh = self._new("at"), self._new("rt")
        with self._lock:
            self._tokens[access] = Token(access, None if ttl is None else self.clock() + ttl)
            self._tokens[refresh] = Token(refresh, None, refresh=True)
        return access, refresh

    def add_access(self, value: str, ttl: float | None = None) -> str:
        with self._lock:
            self._tokens[value] = Token(value, None if ttl is None else self.clock() + ttl)
        return value

    def add_refresh(self, value: str) -> str:
        with self._lock:
            self._tokens[value] = Token(value, None, refresh=True)
        return value

    def revoke(self, value: str) -> None:
        with self._lock:
            if value in self._tokens:
                self._tokens[value].revoked = True
            else:
                self._tokens[value] = Token(value, None, revoked=True)

    def expire(self, value: str) -> None:
        with self._lock:
            self._tokens[value].expires_at = self.clock() - 1

    def check(self, value: str | None) -> str:
        """``ok``, ``missing``, ``unknown``, ``expired`` or ``revoked``."""
        if not value:
            return "missing"
        with self._lock:
            token = self._tokens.get(value)
        if token is None or token.refresh:
            return "unknown"
        if token.revoked:
            return "revoked"
        if token.expires_at is not None and token.expires_at <= self.clock():
            return "expired"
        return "ok"

    def refresh_grant(self, refresh_token: str, ttl: float = 3600.0) -> str | None:
        """A new access token for a valid refresh token, else None (invalid_grant)."""
        with self._lock:
            token = self._tokens.get(refresh_token)
            if token is None or not token.refresh or token.revoked:
                return None
            self.refreshes += 1
        access = self._new("at")
        with self._lock:
            self._tokens[access] = Token(access, self.clock() + ttl)
        return access

    def exchange(self, access_token: str, ttl: float) -> str | None:
        """Facebook-style exchange of a still-valid access token for a new one."""
        if self.check(access_token) != "ok":
            return None
        new = self._new("at")
        with self._lock:
            self._tokens[new] = Token(new, self.clock() + ttl)
            self.refreshes += 1
        return new


class PlatformApp:
    """Base of every platform sandbox (registered with its platform in
    ``platforms/registry.py``). Subclasses implement ``handle``."""

    platform = "base"
    # The app credentials this sandbox expects, by environment variable (what a real app
    # would be given); ``Sandbox.env`` hands them to clearlift.
    APP_CREDENTIALS: ClassVar[dict[str, str]] = {}

    def __init__(self, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.tokens = TokenAuthority(self.platform, clock)
        self.faults = FaultPlan()
        self.requests: list[Request] = []
        self._log_lock = threading.Lock()
        self.oversize_bytes_sent = 0  # bytes of the last ``oversize`` fault body written
        # Real platforms (Google's, Meta's and Stripe's front ends) compress an answer when
        # the request says ``Accept-Encoding: gzip``, as clearlift's does. Off by default so
        # tests can read sizes off the wire; ``gzipped`` counts the answers compressed.
        self.gzip = False
        self.gzipped = 0

    def authorize(self, account_id: str, ttl: float | None = 3600.0) -> tuple[str, str | None]:
        """The (access, refresh) tokens the API worker would store when a user connects
        ``account_id`` (an access token living ``ttl`` seconds; None: for ever)."""
        return self.tokens.issue(ttl)

    def handle(self, request: Request) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError

    def record(self, request: Request) -> None:
        with self._log_lock:
            self.requests.append(request)

    def requests_to(self, pattern: str) -> list[Request]:
        with self._log_lock:
            return [r for r in self.requests if re.search(pattern, r.path)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without this each answer waits ~40 ms for a
    # delayed ACK
    disable_nagle_algorithm = True
    app: PlatformApp  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(
            method=self.command,
            path=parts.path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        app = self.app
        app.record(request)
        if app.faults.latency_seconds:
            time.sleep(app.faults.latency_seconds)
        fault = app.faults.take(parts.path)
        if fault is not None:
            if fault.kind == "latency":
                time.sleep(fault.seconds)
                fault = None
            elif fault.kind == "timeout":
                time.sleep(fault.seconds or 30.0)
                self.close_connection = True
                return
            elif fault.kind == "reset":
                try:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                except OSError:
                    pass
                self.close_connection = True
                return
            elif fault.kind == "status":
                return self._send(Reply(fault.status, fault.body, dict(fault.headers)))
            elif fault.kind == "malformed":
                return self._send(Reply(fault.status if fault.status != 500 else 200, b'{"not json'))
            elif fault.kind == "redirect":
                status = fault.status if 300 <= fault.status < 400 else 302
                return self._send(Reply(status, b"", {"Location": fault.location}))
            elif fault.kind == "oversize":
                return self._send_oversize(fault.size, fault.chunked)
            elif fault.kind == "html":
                page = b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
                return self._send(Reply(fault.status, page, {"Content-Type": "text/html"}))
        try:
            reply = app.handle(request)
        except Exception as exc:  # a sandbox bug must show, not hang the client
            reply = Reply(500, {"error": {"message": f"sandbox error: {exc!r}"}})
        if fault is not None and fault.kind == "drop":
            return self._send(reply, cut=True)
        if fault is not None and fault.kind == "truncate":
            raw = reply.encode()
            return self._send(Reply(reply.status, raw[: max(1, len(raw) // 2)], reply.headers))
        if fault is not None and fault.kind == "slow_body":
            return self._send(reply, byte_every=fault.seconds or 1.0, at_once=fault.size)
        self._send(reply)

    def _send(
        self, reply: Reply, cut: bool = False, *, byte_every: float | None = None, at_once: int = 0
    ) -> None:
        raw = reply.encode()
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
        if self._gzip_wanted(cut, byte_every):
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
            self.app.gzipped += 1
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if cut:  # the work is done, the answer is lost on the way
            self.wfile.write(raw[: len(raw) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if byte_every is None:
            self.wfile.write(raw)
            return
        self.close_connection = True
        try:
            self.wfile.write(raw[:at_once])
            for i in range(at_once, len(raw)):
                self.wfile.write(raw[i : i + 1])
                self.wfile.flush()
                time.sleep(byte_every)
        except OSError:  # the client gave up (its deadline cut the request)
            pass

    def _gzip_wanted(self, cut: bool, byte_every: float | None) -> bool:
        """Compress this answer: the app does, the client accepts gzip, and no fault cuts or
        trickles the bytes (those test the raw stream)."""
        accepted = self.headers.get("Accept-Encoding", "")
        return self.app.gzip and not cut and byte_every is None and "gzip" in accepted.lower()

    def _send_oversize(self, size: int, chunked: bool) -> None:
        """A 200 JSON answer of ``size`` bytes (whitespace), written piecewise until the client
        hangs up."""
        block = b" " * 65536
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        self.close_connection = True
        sent = 0
        try:
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading
            pass
        self.app.oversize_bytes_sent = sent

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its deadline passed, it was stopped) is not the sandbox's
        # error: a late answer meets a closed socket. Anything else is printed as usual.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class SandboxServer:
    """Runs one ``PlatformApp`` on loopback. Use as a context manager or start/stop."""

    def __init__(self, app: PlatformApp, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        handler = type(f"{type(app).__name__}Handler", (_Handler,), {"app": app})
        self._httpd = _Server((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if isinstance(host, bytes):  # only for AF_UNIX; this server is TCP
            host = host.decode()
        return f"http://{host}:{port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.app.platform}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
