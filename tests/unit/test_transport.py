"""The transport's pure parts: query and form encoding as requests writes it, and which proxy
the environment names for a URL (curl's and requests' ``*_proxy`` / ``no_proxy`` rules)."""

from __future__ import annotations

import pytest

from clearlift_cli.platforms.transport import encode_params, proxy_for

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_params_repeat_a_list_drop_none_and_escape():
    assert encode_params({"a": "x y&z", "ids": ["1", 2], "skip": None, "n": 0, "in": [None, "k"]}) == (
        "a=x+y%26z&ids=1&ids=2&n=0&in=k"
    )
    assert encode_params({"flag": True, "raw": b"caf\xc3\xa9"}) == "flag=True&raw=caf%C3%A9"
    assert encode_params({"fields": "id,name", "filtering": '[{"field":"x"}]'}) == (
        "fields=id%2Cname&filtering=%5B%7B%22field%22%3A%22x%22%7D%5D"
    )


def test_the_scheme_picks_the_proxy_and_all_proxy_is_the_fallback(env):
    env.setenv("HTTPS_PROXY", "http://corp:3128")
    env.setenv("http_proxy", "corp-plain:8080")
    assert proxy_for("https://googleads.googleapis.com/v23/x") == "http://corp:3128"
    assert proxy_for("http://api.example.test/x") == "http://corp-plain:8080"
    env.delenv("HTTPS_PROXY")
    assert proxy_for("https://graph.facebook.com/x") is None
    env.setenv("ALL_PROXY", "http://all:1")
    assert proxy_for("https://graph.facebook.com/x") == "http://all:1"


def test_loopback_never_uses_a_proxy(env):
    env.setenv("all_proxy", "http://corp:3128")
    for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]:9/x", "http://a.localhost/"):
        assert proxy_for(url) is None, url
    assert proxy_for("http://10.0.0.1/x") == "http://corp:3128"


@pytest.mark.parametrize(
    "no_proxy,url,direct",
    [
        ("*", "https://api.stripe.com/v1", True),
        ("stripe.com", "https://api.stripe.com/v1", True),
        (".stripe.com", "https://api.stripe.com/v1", True),
        ("stripe.com", "https://notstripe.com/v1", False),
        ("api.stripe.com:443", "https://api.stripe.com:443/v1", True),
        ("api.stripe.com:8443", "https://api.stripe.com/v1", False),
        ("10.0.0.0/8", "http://10.2.3.4/x", True),
        ("10.0.0.0/8", "http://11.2.3.4/x", False),
        (" example.test , stripe.com ", "https://api.stripe.com/v1", True),
        ("", "https://api.stripe.com/v1", False),
    ],
)
def test_no_proxy(env, no_proxy, url, direct):
    env.setenv("all_proxy", "http://corp:3128")
    env.setenv("NO_PROXY", no_proxy)
    assert (proxy_for(url) is None) is direct
