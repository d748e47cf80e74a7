"""The HTTP transport under ``HttpClient`` and ``D1Client``: urllib3 connection pools, one
set per thread, and nothing else.

Why not requests: a request through ``requests.Session`` cost 1.6 ms of CPU here against
0.8 ms through urllib3 itself (the same server, keep-alive, 2,000 requests each; issue 19),
and a job sends three. The difference is work clearlift does not need: merging session and
request settings (eight ``typing.Protocol`` checks each in requests 2.34), reading proxy,
netrc and CA settings from the environment, a cookie jar, hooks and redirect handling. What
clearlift does need is kept here, with requests' conventions:

- proxies from ``http_proxy`` / ``https_proxy`` / ``all_proxy`` (either case), ``no_proxy``
  host suffixes, ``*`` and CIDR blocks; never a proxy for a loopback target (the sandbox,
  the demo). User info in a proxy URL becomes ``Proxy-Authorization``.
- certificates from ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, else certifi's bundle;
- ``Accept-Encoding: gzip, deflate`` (answers are decompressed as they are read);
- no redirect is followed (the callers refuse a 3xx);
- query parameters encoded as requests does (a list repeats its key, ``None`` drops it).

Each connection is cuttable: ``deadline.request_deadline`` shuts its socket down when the
request's deadline passes or the job is stopped. A request that fails before an answer
raises ``TransportError``; so does a read of the answer that fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, unquote, urlencode, urlsplit

from clearlift_cli.platforms import deadline

USER_AGENT = "clearlift/0.1"
_DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}
_POOL_SIZE = 4  # per host and thread: a thread holds one answer at a time, rarely two

_local = threading.local()
_JSON = json.JSONEncoder(allow_nan=False)  # one encoder, not one per request


class TransportError(Exception):
    """A request that got no (whole) answer. ``kind`` names the underlying failure;
    ``timeout`` says a socket wait ran out; ``sent`` is False only when the request surely
    never left (the connection was refused or timed out while connecting)."""

    def __init__(self, kind: str, *, timeout: bool, sent: bool):
        super().__init__(kind)
        self.kind = kind
        self.timeout = timeout
        self.sent = sent


class Answer:
    """An answer whose body has not been read: ``iter_content`` reads it (decompressed),
    ``close`` gives the connection back (or drops it if the body was not read to its end)."""

    __slots__ = ("_raw", "headers", "status_code", "url")

    def __init__(self, raw: Any, url: str):
        self._raw = raw
        self.status_code: int = raw.status
        self.headers: Mapping[str, str] = raw.headers
        self.url = url

    @property
    def encoding(self) -> str | None:
        """The charset the answer's ``Content-Type`` names, if any."""
        for part in self.headers.get("Content-Type", "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                return value.strip("\"' ")
        return None

    def iter_content(self, size: int) -> Iterator[bytes]:
        with _failures():
            yield from self._raw.stream(size, decode_content=True)

    def close(self) -> None:
        if not self._raw.isclosed():  # not read to its end: the connection cannot be reused
            self._raw.close()
        self._raw.release_conn()


def send(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    json_body: Any = None,
    data: Mapping[str, Any] | bytes | None = None,
    connect_timeout: float,
    read_timeout: float,
) -> Answer:
    """Send one request on this thread's pools; the answer comes back unread."""
    from urllib3 import Timeout

    if params:
        query = encode_params(params)
        if query:
            url = f"{url}{'&' if urlsplit(url).query else '?'}{query}"
    sent = dict(_DEFAULT_HEADERS)
    body: bytes | None = None
    if json_body is not None:
        body = _JSON.encode(json_body).encode()
        sent["Content-Type"] = "application/json"
    elif isinstance(data, bytes):
        body = data
    elif data is not None:
        body = encode_params(data).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    if headers:
        sent.update(headers)
    parts = urlsplit(url)
    proxy = proxy_for(url, parts)
    options = {
        "body": body,
        "headers": sent,
        "timeout": Timeout(connect=connect_timeout, read=read_timeout),
        "retries": False,
        "redirect": False,
        "preload_content": False,
        "decode_content": True,
    }
    with _failures():
        if proxy is None:
            target = url[len(parts.scheme) + 3 + len(parts.netloc) :] or "/"
            raw = _direct_pool(parts).urlopen(method, target, assert_same_host=False, **options)
        else:
            raw = _proxy_manager(proxy).urlopen(method, url, **options)
    return Answer(raw, url)


def encode_params(params: Mapping[str, Any]) -> str:
    """``application/x-www-form-urlencoded`` as requests writes it: a list or tuple repeats
    its key, ``None`` (alone or in a list) is left out, bytes are taken as UTF-8."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((key, _text(v)) for v in values if v is not None)
    return urlencode(pairs)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return value.decode() if isinstance(value, bytes) else str(value)


class _failures:
    """urllib3's and the socket's failures as ``TransportError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        import http.client

        from urllib3 import exceptions as u3

        if not isinstance(exc, (u3.HTTPError, OSError, http.client.HTTPException)):
            return
        # NewConnectionError is a ConnectTimeoutError in urllib3 2: both mean nothing was sent
        never_sent = isinstance(exc, (u3.ConnectTimeoutError, u3.NameResolutionError))
        if isinstance(exc, u3.ProxyError) and isinstance(exc.original_error, u3.NewConnectionError):
            never_sent = True
        timeout = isinstance(exc, (u3.TimeoutError, TimeoutError)) and not isinstance(
            exc, u3.NewConnectionError
        )
        raise TransportError(type(exc).__name__, timeout=timeout, sent=not never_sent) from None


def _pools() -> dict[Any, Any]:
    pools: dict[Any, Any] | None = getattr(_local, "pools", None)
    if pools is None:
        pools = _local.pools = {}
    return pools


def _direct_pool(parts: SplitResult) -> Any:
    """This thread's connection pool for the URL's origin (a handful per thread: the
    platforms, their OAuth hosts, D1), made directly rather than through a ``PoolManager``,
    which parses the URL and builds a pool key on every request."""
    pools = _pools()
    origin = (parts.scheme, parts.netloc)
    pool = pools.get(origin)
    if pool is None:
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {parts.scheme}://")
        host, port = parts.hostname or "", parts.port or (443 if scheme == "https" else 80)
        kwargs: dict[str, Any] = {"maxsize": _POOL_SIZE}
        if scheme == "https":
            kwargs["ca_certs"] = _ca_bundle()
        pool = pools[origin] = deadline.pool_classes()[scheme](host, port, **kwargs)
    return pool


def _proxy_manager(proxy: str) -> Any:
    """This thread's pool manager through ``proxy``."""
    from urllib3 import ProxyManager
    from urllib3.util import make_headers

    pools = _pools()
    manager = pools.get(proxy)
    if manager is None:
        kwargs: dict[str, Any] = {"num_pools": 16, "maxsize": _POOL_SIZE, "ca_certs": _ca_bundle()}
        parts = urlsplit(proxy)
        if parts.username:
            auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            kwargs["proxy_headers"] = make_headers(proxy_basic_auth=auth)
        manager = pools[proxy] = ProxyManager(proxy, **kwargs)
        manager.pool_classes_by_scheme = deadline.pool_classes()
    return manager


def _ca_bundle() -> str | None:
    named = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if named:
        return named
    try:
        import certifi
    except ImportError:  # the system's store
        return None
    return certifi.where()


def proxy_for(url: str, parts: SplitResult | None = None) -> str | None:
    """The proxy URL the environment names for ``url`` (None: go direct). Loopback targets
    never use one."""
    parts = parts or urlsplit(url)
    host = (parts.hostname or "").lower()
    if _is_loopback_host(host):
        return None
    proxy = _env(f"{parts.scheme}_proxy") or _env("all_proxy")
    if not proxy or _bypassed(host, parts.port, _env("no_proxy")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def is_loopback(url: str) -> bool:
    """True for a URL whose host is ``localhost`` or a loopback address (127.0.0.0/8, ::1):
    such traffic never goes through a proxy. Names are not resolved."""
    return _is_loopback_host(urlsplit(url).hostname or "")


@lru_cache(maxsize=256)  # asked before every request, of the few hosts clearlift talks to
def _is_loopback_host(hostname: str) -> bool:
    host = hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env(name: str) -> str:
    """A proxy variable, lower case first (as curl and requests read them)."""
    return os.environ.get(name) or os.environ.get(name.upper()) or ""


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """``no_proxy`` as curl and requests read it: ``*``, host suffixes (with or without a
    leading dot, optionally ``:port``) and, for an IP address, CIDR blocks."""
    for entry in (e.strip().lower() for e in no_proxy.replace(" ", ",").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, _, want_port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and str(port or "") != want_port:
            continue
        name = name.lstrip(".")
        if host == name or host.endswith(f".{name}"):
            return True
    return False


__all__ = ["Answer", "TransportError", "USER_AGENT", "encode_params", "is_loopback", "proxy_for", "send"]
