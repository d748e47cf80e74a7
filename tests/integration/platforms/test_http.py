"""The HTTP layer every platform client shares, against sandbox servers over real HTTP on
loopback: no redirects followed (secret headers never reach another host), no proxy for
loopback targets (but still for every other host), a bounded answer size."""

from __future__ import annotations

import socket
from datetime import UTC, date, datetime

import pytest

from clearlift_cli.errors import PermanentError, TransientError
from clearlift_cli.platforms.base import Credentials, PlatformContext
from clearlift_cli.platforms.google import GoogleAdsClient
from clearlift_cli.platforms.http import MAX_RESPONSE_BYTES, HttpClient
from clearlift_cli.platforms.tiktok import TikTokAdsClient
from clearlift_cli.platforms.transport import is_loopback
from clearlift_cli.sandbox import APP_CREDENTIALS
from clearlift_cli.sandbox.server import PlatformApp, Reply, SandboxServer
from clearlift_cli.settings import ENV_NAMES, resolve
from clearlift_cli.timeutil import FrozenClock

UTC = UTC
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class Recorder(PlatformApp):
    """Another host: answers 200 ``{}`` to anything and records what it received."""

    platform = "elsewhere"

    def handle(self, request):
        return Reply(200, {"data": {}, "code": 0, "results": []})


@pytest.fixture
def elsewhere():
    app = Recorder()
    with SandboxServer(app) as srv:
        yield srv


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2024, 6, 1, 12, 0, tzinfo=UTC))


def _settings(tmp_path, sandbox):
    by_env = {env: name for name, env in ENV_NAMES.items()}
    flags = {by_env[k]: v for k, v in sandbox.env().items() if k in by_env}
    flags.update(home=str(tmp_path), http_timeout=2)
    return resolve(flags=flags, environ={})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_proxy_env(monkeypatch):
    for name in PROXY_VARS + ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


# --- redirects ------------------------------------------------------------------------------


def test_a_cross_host_redirect_is_refused_and_tiktok_access_token_never_reaches_the_other_host(
    tmp_path, sandbox, elsewhere, clock, monkeypatch
):
    _no_proxy_env(monkeypatch)
    tt = sandbox.tiktok
    token, _ = tt.tokens.issue(ttl=None)
    target = f"{elsewhere.base_url}/collect?from=tiktok"
    tt.faults.add("redirect", path=r"/campaign/get/$", status=307, location=target)
    ctx = PlatformContext(
        settings=_settings(tmp_path, sandbox), account_id="7012345678901234567", clock=clock
    )
    client = TikTokAdsClient(ctx, Credentials(access_token=token))

    with pytest.raises(PermanentError) as info:
        list(client.campaigns())
    message = str(info.value)
    assert "HTTP 307 redirect to http://127.0.0.1:" in message and "refused" in message
    assert "/collect" not in message and "from=tiktok" not in message  # no path or query shown
    assert elsewhere.app.requests == []  # nothing at all reached the other host
    assert len(tt.requests_to(r"/campaign/get/$")) == 1  # a redirect is not retried
    assert tt.requests[0].headers["access-token"] == token  # it was sent to TikTok itself


def test_a_cross_host_redirect_is_refused_and_google_developer_token_never_reaches_the_other_host(
    tmp_path, sandbox, elsewhere, clock, monkeypatch
):
    _no_proxy_env(monkeypatch)
    g = sandbox.google
    token, _ = g.tokens.issue(ttl=3600)
    g.faults.add(
        "redirect",
        path="searchStream",
        status=302,
        location=f"http://user:pw@{elsewhere.base_url[7:]}/v26/customers",
    )
    ctx = PlatformContext(settings=_settings(tmp_path, sandbox), account_id="1234567890", clock=clock)
    client = GoogleAdsClient(ctx, Credentials(access_token=token))

    with pytest.raises(PermanentError) as info:
        list(client.daily_metrics(date(2024, 5, 1), date(2024, 5, 2)))
    assert "HTTP 302 redirect to http://127.0.0.1:" in str(info.value)
    assert "user" not in str(info.value) and "pw" not in str(info.value)
    assert elsewhere.app.requests == []
    sent = g.requests_to("searchStream")
    assert (
        len(sent) == 1 and sent[0].headers["developer-token"] == APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"]
    )


# --- proxies --------------------------------------------------------------------------------


def test_loopback_targets_never_go_through_a_proxy(sandbox, monkeypatch):
    _no_proxy_env(monkeypatch)
    dead_proxy = f"http://127.0.0.1:{_closed_port()}"
    for name in PROXY_VARS:
        monkeypatch.setenv(name, dead_proxy)
    http = HttpClient(platform="stripe", timeout=2, attempts=1)
    key = sandbox.stripe.issue_key("acct_1Proxy")
    base = sandbox.servers["stripe"].base_url
    port = base.rsplit(":", 1)[1]
    for url in (f"{base}/v1/account", f"http://localhost:{port}/v1/account"):
        body = http.request(
            "GET", url, classify=lambda r, b: None, headers={"Authorization": f"Bearer {key}"}
        )
        assert body["id"] == "acct_1Proxy"


def test_other_hosts_still_go_through_the_configured_proxy(elsewhere, monkeypatch):
    _no_proxy_env(monkeypatch)
    # The recorder plays the corporate proxy: a plain-HTTP proxy receives the absolute URL.
    monkeypatch.setenv("http_proxy", elsewhere.base_url)
    http = HttpClient(platform="tiktok", timeout=2, attempts=1)
    http.request("GET", "http://api.example.test/open_api/v1.3/campaign/get/", classify=lambda r, b: None)
    (seen,) = elsewhere.app.requests
    assert seen.headers["host"] == "api.example.test" and seen.path == "/open_api/v1.3/campaign/get/"

    # NO_PROXY is honoured as usual: that host is now tried directly (and does not exist).
    monkeypatch.setenv("no_proxy", "api.example.test")
    with pytest.raises(TransientError):
        http.request("GET", "http://api.example.test/x", classify=lambda r, b: None)
    assert len(elsewhere.app.requests) == 1


@pytest.mark.parametrize(
    "url, loopback",
    [
        ("http://127.0.0.1:8080/x", True),
        ("http://127.8.9.10/", True),
        ("http://[::1]:99/", True),
        ("http://localhost:1/", True),
        ("http://LOCALHOST./", True),
        ("http://api.localhost/", True),
        ("https://api.stripe.com/v1", False),
        ("http://10.0.0.1/", False),
        ("http://[::2]/", False),
        ("http://localhost.example.com/", False),
        ("http://128.0.0.1/", False),
    ],
)
def test_is_loopback(url, loopback):
    assert is_loopback(url) is loopback


# --- answer size ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_over_the_size_cap_fails_clearly_without_reading_it_all(sandbox, monkeypatch, chunked):
    _no_proxy_env(monkeypatch)
    st = sandbox.stripe
    st.faults.add("oversize", path="/v1/charges", size=MAX_RESPONSE_BYTES + 10 * 1024 * 1024, chunked=chunked)
    http = HttpClient(platform="stripe", timeout=5)
    with pytest.raises(PermanentError) as info:
        http.request("GET", f"{sandbox.servers['stripe'].base_url}/v1/charges", classify=lambda r, b: None)
    assert "larger than 64 MiB" in str(info.value) and "shorter window" in str(info.value)
    assert len(st.requests) == 1  # not retried
    # Announced sizes are refused before reading; chunked ones once the cap is passed.
    assert (st.oversize_bytes_sent < MAX_RESPONSE_BYTES + 10 * 1024 * 1024) or not chunked


def test_an_answer_at_the_size_cap_is_read(sandbox, monkeypatch):
    _no_proxy_env(monkeypatch)
    st = sandbox.stripe
    key = st.issue_key("acct_1Big")
    http = HttpClient(platform="stripe", timeout=5, max_response_bytes=2000)
    url = f"{sandbox.servers['stripe'].base_url}/v1/charges"
    body = http.request(
        "GET",
        url,
        params={"limit": 1},
        classify=lambda r, b: None,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert body["object"] == "list"
    with pytest.raises(PermanentError):
        http.request(
            "GET",
            url,
            params={"limit": 100},
            classify=lambda r, b: None,
            headers={"Authorization": f"Bearer {key}"},
        )


def test_a_gzip_answer_is_read_decompressed_and_capped_by_what_it_decompresses_to(sandbox, monkeypatch):
    """Real platforms compress an answer for a client that accepts gzip, as clearlift's
    requests say they do: the body is decompressed as it is read, and the size cap counts
    the decompressed bytes, not the (much smaller) bytes on the wire."""
    import gzip
    import json

    _no_proxy_env(monkeypatch)
    st = sandbox.stripe
    monkeypatch.setattr(st, "gzip", True)
    gzipped_before = st.gzipped
    key = st.issue_key("acct_1Gzip")
    url = f"{sandbox.servers['stripe'].base_url}/v1/charges"
    headers = {"Authorization": f"Bearer {key}"}
    body = HttpClient(platform="stripe", timeout=5).request(
        "GET", url, params={"limit": 100}, classify=lambda r, b: None, headers=headers
    )
    assert body["object"] == "list" and len(body["data"]) == 100
    assert st.gzipped == gzipped_before + 1
    assert st.requests[-1].headers["accept-encoding"] == "gzip, deflate"
    text = json.dumps(body).encode()
    cap = len(text) // 2
    assert len(gzip.compress(text)) < cap  # what crosses the wire is well under the cap
    with pytest.raises(PermanentError, match="larger than"):
        HttpClient(platform="stripe", timeout=5, max_response_bytes=cap).request(
            "GET", url, params={"limit": 100}, classify=lambda r, b: None, headers=headers
        )
