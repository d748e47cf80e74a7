"""HTTP for platform clients: timeouts, classified errors, short retries, no leaked secrets.

``HttpClient.request`` sends one request and returns the parsed JSON body;
``HttpClient.stream_array`` yields the elements of an answer that is one JSON array as they
arrive (Google's ``searchStream``), holding one element at a time. Each platform
passes a ``classify(response, body)`` function that raises the right
``clearlift_cli.errors`` exception for an error answer (or returns for a good one).
Network failures, timeouts and bodies that are not JSON become ``TransientError``.
Transient errors are retried here a few times with exponential backoff; a
``RateLimited`` whose wait is short is slept here, a longer one propagates so the queue can
defer the job instead of holding a worker. Every message is redacted.

Three things are refused whatever the platform: a redirect (none of these APIs redirect,
and following one would carry ``Access-Token`` / ``developer-token`` to the other host),
an answer (or, streamed, one element of it) larger than ``MAX_RESPONSE_BYTES``, and a proxy
for loopback targets (the sandbox, the demo): ``http_proxy`` / ``https_proxy`` /
``NO_PROXY`` apply to every other host as usual (``transport``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import urlsplit

from clearlift_cli.errors import Interrupted, PermanentError, RateLimited, TokenExpired, TransientError
from clearlift_cli.platforms import deadline, transport
from clearlift_cli.platforms.jsonstream import StreamError, iter_json_array
from clearlift_cli.redact import MASK, redact
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from clearlift_cli.platforms.base import PlatformContext

# email.utils is imported where it is used: `status` and `schedule` read each platform's
# defaults (its client class), and do not need it.

log = logging.getLogger("clearlift.http")

Classify = Callable[["Response", Any], None]
T = TypeVar("T")

# A rate-limit wait up to this long is slept in place; longer ones defer the job.
SHORT_WAIT_SECONDS = 5.0
# The largest answer read into memory (after decompression). A page of any platform is
# well under a megabyte; a bigger answer fails the job with a clear message instead of
# exhausting memory. Google's searchStream is decoded element by element, so there the cap
# bounds one batch (10,000 rows, about 4 MB), not the whole answer.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 64 * 1024
_END = object()
# The longest piece of a platform's answer quoted in an error message.
MAX_MESSAGE_CHARS = 300
# Key-shaped values a platform may echo: Stripe's keys, and the masked form it quotes back
# ("sk_test_****1234": even the masked tail is not ours to show).
_KEY_SHAPED = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_\S*|\*{2,}\S*")


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, TokenExpired):
        return False
    if isinstance(exc, RateLimited):
        return exc.retry_after <= SHORT_WAIT_SECONDS
    return isinstance(exc, TransientError)


def short(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A platform's text (an error message, a row that did not parse) fit to quote: known
    secrets and key-shaped values masked, on one line, at most ``limit`` characters.
    Redacted before it is cut, so a cut never leaves the head of a secret; and again once
    on one line, so a secret the answer split over lines is masked too."""
    clean = redact(" ".join(redact(_KEY_SHAPED.sub(MASK, str(text))).split()))
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def client_for(ctx: PlatformContext, platform: str) -> HttpClient:
    """The HTTP client of one platform call: the context's clock and
    ``CLEARLIFT_HTTP_TIMEOUT``."""
    return HttpClient(platform=platform, clock=ctx.clock, timeout=ctx.settings.http_timeout)


class Response:
    """What a classifier sees: status, headers, parsed body (or None), raw text."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str, url: str):
        self.status = status
        self.headers = headers
        self.text = text
        self._url = url
        self._redacted: str | None = None

    @property
    def url(self) -> str:
        """The request's URL, redacted (on first read: most answers never show it)."""
        if self._redacted is None:
            self._redacted = redact(self._url)
        return self._redacted

    @overload
    def retry_after(self, default: float, now: float | None = None) -> float: ...
    @overload
    def retry_after(self, default: None = None, now: float | None = None) -> float | None: ...
    def retry_after(self, default: float | None = None, now: float | None = None) -> float | None:
        """Seconds of an HTTP ``Retry-After`` header (``default`` when absent or unreadable):
        a proxy's or platform's 429 may say how long to wait only there."""
        wait = parse_retry_after(
            self.headers.get("Retry-After") if self.headers else None, time.time() if now is None else now
        )
        return default if wait is None else wait


def parse_retry_after(raw: str | None, now: float) -> float | None:
    """Seconds of a ``Retry-After`` value: delta-seconds or an HTTP date (RFC 9110),
    counted from ``now`` (epoch seconds); None when absent or unreadable."""
    if not raw:
        return None
    raw = raw.strip()
    try:  # 0, negative, NaN or infinite waits are held to a sane range by whoever waits
        return max(0.0, float(raw))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def _origin(location: str | None, base: str) -> str:
    """Scheme and host of a redirect target, without user info, path or query (they may
    carry secrets)."""
    parts = urlsplit(location or "")
    if not parts.netloc:
        parts = urlsplit(base)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'http'}://{host}{port}"


def _read_capped(resp, limit: int, platform: str) -> bytes:
    """The (decompressed) body, refusing more than ``limit`` bytes without reading them all."""

    def too_large(size: str) -> PermanentError:
        return PermanentError(
            f"{platform}: the answer is larger than {limit // (1024 * 1024)} MiB ({size}); "
            "refused to keep memory bounded — sync a shorter window (sync --since/--until)",
            platform=platform,
        )

    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit and not resp.headers.get("Content-Encoding"):
        raise too_large(f"{int(declared)} bytes announced")
    body = bytearray()
    for chunk in resp.iter_content(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise too_large(f"more than {limit} bytes read")
    return bytes(body)


class HttpClient:
    def __init__(
        self,
        *,
        platform: str,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 60.0,
        attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.platform = platform
        self.clock = clock
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_response_bytes = max_response_bytes
        self.requests_sent = 0
        # Called with the Response of every answered request (e.g. usage headers).
        self.observers: list[Callable[[Response], None]] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        classify: Classify,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        return self._retrying(
            partial(
                self._once,
                method,
                url,
                classify=classify,
                params=params,
                json_body=json_body,
                data=data,
                headers=headers,
            )
        )

    def stream_array(
        self,
        method: str,
        url: str,
        *,
        classify: Classify,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[Any]:
        """Send one request whose good answer is a JSON array and yield its elements as they
        arrive, each passed through ``classify`` first (a stream may end in an error
        element). An error status is read whole and classified as ``request`` does. A
        failure before the first element is retried like ``request``; one after it raises
        ``TransientError`` (what was yielded cannot be taken back: the caller's transaction
        must be)."""

        def first_element():
            # the deadline runs from connecting to the first element, then to each next one
            # (the time the caller spends between elements is its own)
            with deadline.request_deadline(self.timeout) as cut:
                resp, response = self._open(
                    method, url, classify=classify, json_body=json_body, headers=headers
                )
                elements = self._elements(resp)
                try:
                    element = next(elements, _END)
                    if element is not _END:
                        classify(response, element)  # raises for an error element
                except BaseException:
                    resp.close()
                    raise
            return resp, response, elements, element, cut.connections

        resp, response, elements, element, conns = self._retrying(first_element)
        try:
            while element is not _END:
                yield element
                with deadline.request_deadline(self.timeout, connections=conns):
                    element = next(elements, _END)
                if element is not _END:
                    classify(response, element)
        finally:
            resp.close()

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried up to ``attempts`` times while it fails with a transient
        error or a short rate limit: exponential backoff, or the wait the platform asked
        for, slept on the client's clock. The last failure is raised as it was. (A loop of
        its own: building a tenacity ``Retrying`` for every request cost more CPU than the
        rest of the retry logic.)"""
        tries = max(1, self.attempts)
        for number in range(1, tries + 1):
            try:
                return attempt()
            except TransientError as exc:  # RateLimited and TokenExpired are kinds of it
                if number == tries or not _retryable(exc):
                    raise
                if isinstance(exc, RateLimited):
                    wait = exc.retry_after
                else:
                    wait = min(self.backoff_max, self.backoff_base * (2 ** (number - 1)))
            self.clock.sleep(wait)
        raise AssertionError("unreachable")  # the last try returned or raised

    @contextlib.contextmanager
    def _network_errors(self):
        """Turn the network's failures into ``TransientError`` (``Interrupted`` when the
        consumer is stopping and cut the request)."""
        try:
            yield
        except transport.TransportError as exc:
            raise self._cut_error() or self._failure(exc) from None

    def _cut_error(self) -> Exception | None:
        """Why this thread's request failed if it was cut: its deadline passed, or the
        consumer is stopping (None when it was not cut)."""
        cut = deadline.current_request()
        if cut is not None and cut.reason == deadline.STOPPING:
            return Interrupted(f"{self.platform}: request cut short: the consumer is stopping")
        if cut is not None and cut.reason == deadline.DEADLINE:
            return TransientError(
                f"{self.platform}: request timed out after {self.timeout:g}s (its whole deadline, "
                "connect to last byte: CLEARLIFT_HTTP_TIMEOUT)",
                platform=self.platform,
            )
        return None

    def _failure(self, exc: transport.TransportError) -> TransientError:
        """The error a request that got no answer stands for."""
        if exc.timeout:
            return TransientError(
                f"{self.platform}: request timed out after {self.timeout:g}s", platform=self.platform
            )
        return TransientError(f"{self.platform}: connection failed ({exc.kind})", platform=self.platform)

    def _refuse_redirect(self, resp) -> None:
        if 300 <= resp.status_code < 400:
            # None of these APIs redirect: a 3xx means the request is not reaching the platform
            # (a wrong *_URL setting, an intercepting proxy or captive portal). Following it
            # would send the secret headers to another host, and retrying reaches the same
            # place, so the job fails now and says where it was sent.
            raise PermanentError(
                f"{self.platform}: HTTP {resp.status_code} redirect to "
                f"{redact(_origin(resp.headers.get('Location'), resp.url))} refused "
                "(the platform API does not redirect: check the API URL setting and any proxy)",
                platform=self.platform,
            )

    def _once(self, method, url, *, classify, params, json_body, data, headers) -> Any:
        self.requests_sent += 1
        # self.timeout is the whole request's deadline, connect to last byte; the socket
        # timeout only bounds each socket operation.
        with deadline.request_deadline(self.timeout), self._network_errors():
            resp = transport.send(
                method,
                url,
                params=params,
                json_body=json_body,
                data=data,
                headers=headers,
                connect_timeout=min(10.0, self.timeout),
                read_timeout=self.timeout,
            )
            try:
                raw = _read_capped(resp, self.max_response_bytes, self.platform)
            finally:
                resp.close()
        self._refuse_redirect(resp)
        text, body = self._classify_whole(method, resp, raw, classify)
        if body is None and resp.status_code != 204:
            kind = "an HTML page" if text.lstrip().startswith("<") else "malformed or truncated JSON"
            raise TransientError(
                f"{self.platform}: HTTP {resp.status_code} answered with {kind}",
                platform=self.platform,
            )
        return body

    def _classify_whole(self, method, resp, raw: bytes, classify) -> tuple[str, Any]:
        """Decode an answer read whole, let the observers see it and classify it (which
        raises for an error answer); returns its text and its JSON body (None if none)."""
        text = raw.decode(resp.encoding or "utf-8", errors="replace")
        response = Response(resp.status_code, resp.headers, text, resp.url)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s", method, response.url, resp.status_code)
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        for observe in self.observers:
            observe(response)
        classify(response, body)
        return text, body

    def _open(self, method, url, *, classify, json_body, headers):
        """Send a streamed request. An error status is read whole (capped) and classified,
        which raises; a good answer comes back unread, with the ``Response`` its elements
        are classified by."""
        self.requests_sent += 1
        with self._network_errors():
            resp = transport.send(
                method,
                url,
                json_body=json_body,
                headers=headers,
                connect_timeout=min(10.0, self.timeout),
                read_timeout=self.timeout,
            )
            if resp.status_code >= 300:
                try:
                    raw = _read_capped(resp, self.max_response_bytes, self.platform)
                finally:
                    resp.close()
        self._refuse_redirect(resp)
        if resp.status_code >= 300:
            text, _ = self._classify_whole(method, resp, raw, classify)
            kind = "an HTML page" if text.lstrip().startswith("<") else "no readable error"
            raise TransientError(
                f"{self.platform}: HTTP {resp.status_code} answered with {kind}", platform=self.platform
            )
        response = Response(resp.status_code, resp.headers, "", resp.url)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s (streamed)", method, response.url, resp.status_code)
        for observe in self.observers:
            observe(response)
        return resp, response

    def _elements(self, resp) -> Iterator[Any]:
        """The decoded elements of a streamed answer; each may hold at most
        ``max_response_bytes`` (counted in characters) before it is complete."""
        try:
            with self._network_errors():
                yield from iter_json_array(resp.iter_content(_READ_CHUNK), max_chars=self.max_response_bytes)
        except StreamError as exc:
            cut = self._cut_error()  # a cut answer without a length ends like a short one
            if cut is not None:
                raise cut from None
            if exc.kind == "too-large":
                raise PermanentError(
                    f"{self.platform}: one element of the streamed answer is larger than "
                    f"{self.max_response_bytes / (1024 * 1024):.3g} MiB; refused to keep memory bounded",
                    platform=self.platform,
                ) from None
            raise TransientError(
                f"{self.platform}: HTTP {resp.status_code} answered with malformed or truncated JSON: {exc}",
                platform=self.platform,
            ) from None
