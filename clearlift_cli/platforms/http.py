"""HTTP for platform clients: timeouts, classified errors, short retries, no leaked secrets.

``HttpClient.request`` sends one request and returns the parsed JSON body. Each platform
passes a ``classify(response, body)`` function that raises the right
``clearlift_cli.errors`` exception for an error answer (or returns for a good one).
Network failures, timeouts and bodies that are not JSON become ``TransientError``.
Transient errors are retried here a few times with exponential backoff (tenacity); a
``RateLimited`` whose wait is short is slept here, a longer one propagates so the queue can
defer the job instead of holding a worker. Every message is redacted.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Mapping

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from clearlift_cli.errors import RateLimited, TokenExpired, TransientError
from clearlift_cli.redact import redact
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

log = logging.getLogger("clearlift.http")

Classify = Callable[["Response", Any], None]

# A rate-limit wait up to this long is slept in place; longer ones defer the job.
SHORT_WAIT_SECONDS = 5.0


class Response:
    """What a classifier sees: status, headers, parsed body (or None), raw text."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str, url: str):
        self.status = status
        self.headers = headers
        self.text = text
        self.url = url  # already redacted

    def retry_after(self, default: float | None = None) -> float | None:
        """Seconds of an HTTP ``Retry-After: <seconds>`` header (``default`` when absent or
        not a number): a proxy's or platform's 429 may say how long to wait only there."""
        raw = self.headers.get("Retry-After") if self.headers else None
        try:
            return max(0.0, float(raw)) if raw else default
        except ValueError:
            return default


_sessions = threading.local()


def _session():
    """One requests.Session per thread, kept across jobs: its connection pool saves a TCP
    (and TLS) handshake per job. Sessions hold no credentials (they go per request)."""
    s = getattr(_sessions, "session", None)
    if s is None:
        import requests

        from http.cookiejar import DefaultCookiePolicy

        s = requests.Session()
        s.headers["User-Agent"] = "clearlift/0.1"
        # shared by every connection this thread syncs: keep no cookies from one to the next
        s.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        _sessions.session = s
    return s


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
        session: Any = None,
    ):
        self.platform = platform
        self.clock = clock
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._session = session
        self.requests_sent = 0
        # Called with the Response of every answered request (e.g. usage headers).
        self.observers: list[Callable[[Response], None]] = []

    @property
    def session(self):
        if self._session is None:
            self._session = _session()
        return self._session

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
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimited):
                return exc.retry_after
            return min(self.backoff_max, self.backoff_base * (2 ** (state.attempt_number - 1)))

        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, TokenExpired):
                return False
            if isinstance(exc, RateLimited):
                return exc.retry_after <= SHORT_WAIT_SECONDS
            return isinstance(exc, TransientError)

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception(retryable),
            sleep=self.clock.sleep,
            reraise=True,
        )
        return retrying(
            self._once, method, url, classify=classify, params=params,
            json_body=json_body, data=data, headers=headers,
        )

    def _once(self, method, url, *, classify, params, json_body, data, headers) -> Any:
        import requests

        self.requests_sent += 1
        try:
            resp = self.session.request(
                method, url, params=params, json=json_body, data=data,
                headers=dict(headers or {}), timeout=(min(10.0, self.timeout), self.timeout),
            )
            text = resp.text
        except requests.Timeout:
            raise TransientError(
                f"{self.platform}: request timed out after {self.timeout:g}s", platform=self.platform
            ) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(
                f"{self.platform}: connection failed ({type(exc).__name__})", platform=self.platform
            ) from None
        except requests.RequestException as exc:
            raise TransientError(
                f"{self.platform}: request failed: {redact(exc)}", platform=self.platform
            ) from None
        response = Response(resp.status_code, resp.headers, text, redact(resp.url))
        log.debug("%s %s -> %s", method, response.url, resp.status_code)
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        for observe in self.observers:
            observe(response)
        classify(response, body)  # raises for an error answer
        if body is None and resp.status_code != 204:
            kind = "an HTML page" if text.lstrip().startswith("<") else "malformed or truncated JSON"
            raise TransientError(
                f"{self.platform}: HTTP {resp.status_code} answered with {kind}",
                platform=self.platform,
            )
        return body
