"""What a platform's answer may put in an error message: one helper (``http.short``) for
every platform, with the strictest masking any of them had."""

from __future__ import annotations

import secrets

import pytest

from clearlift_cli import redact
from clearlift_cli.errors import ClearliftError
from clearlift_cli.platforms import facebook, google, stripe, tiktok
from clearlift_cli.platforms.http import MAX_MESSAGE_CHARS, Response, short


def _secret(label: str) -> str:
    value = f"{label}-{secrets.token_hex(12)}"
    redact.register(value)
    return value


def test_a_secret_across_the_cut_leaves_no_head_behind():
    token = _secret("tok")
    for at in range(MAX_MESSAGE_CHARS - len(token), MAX_MESSAGE_CHARS + 2):
        text = "x" * at + token + " tail"
        out = short(text)
        assert len(out) <= MAX_MESSAGE_CHARS and token[:6] not in out, at


def test_long_text_is_cut_with_an_ellipsis_and_short_text_kept():
    assert short("a  b\n\tc") == "a b c"
    out = short("word " * 100)
    assert len(out) == MAX_MESSAGE_CHARS and out.endswith("…")
    assert short("abcdef", limit=4) == "abc…"


def test_a_secret_holding_a_line_break_is_masked():
    # redacting only after joining the lines (Google's copy) missed it
    secret = _secret("first-line") + "\n" + secrets.token_hex(8)
    redact.register(secret)
    assert secret.split("\n")[1] not in short(f"bad grant: {secret}.")


def test_a_secret_the_answer_wrapped_over_lines_is_masked():
    # redacting only before joining (Facebook's copy) missed it
    secret = f"pass phrase {secrets.token_hex(8)}"
    redact.register(secret)
    out = short(f"rejected: {secret.replace(' ', chr(10) + '  ')}")
    assert secret.split()[-1] not in out and "***" in out


@pytest.mark.parametrize(
    "echo", ["sk_live_51Habc123", "rk_test_51Hxyz", "pk_live_abc", "sk_test_****1234", "****9876"]
)
def test_key_shaped_values_are_masked_for_every_platform(echo):
    out = short(f"Invalid API Key provided: {echo}")
    assert echo not in out and echo[-4:] not in out


def _raised(classify, status: int, body) -> ClearliftError:
    with pytest.raises(ClearliftError) as info:
        classify(Response(status, {}, "", "http://127.0.0.1/x"), body)
    return info.value


@pytest.mark.parametrize(
    ("name", "classify", "status", "wrap"),
    [
        ("google", google.classify, 400, lambda m: {"error": {"code": 400, "message": m, "status": "X"}}),
        ("facebook", facebook.classify, 400, lambda m: {"error": {"message": m, "code": 1, "type": "X"}}),
        ("tiktok", tiktok.classify, 200, lambda m: {"code": 40002, "message": m}),
        (
            "stripe",
            stripe.classify,
            400,
            lambda m: {"error": {"message": m, "type": "invalid_request_error"}},
        ),
    ],
)
def test_each_platforms_error_messages_go_through_the_same_masking(name, classify, status, wrap):
    token = _secret(f"{name}-at")
    message = f"token {token} refused; key sk_test_****4242;\n" + "detail " * 80
    error = _raised(classify, status, wrap(message))
    text = str(error)
    assert token not in text and "4242" not in text and "\n" not in text
    assert text.startswith(f"{name}: ") and len(text) < MAX_MESSAGE_CHARS + 120


def test_tiktok_quotes_a_bare_error_page_without_the_head_of_a_secret():
    # it used to cut the page at 200 characters, then redact: a token across the cut leaked
    token = _secret("tiktok-at")
    page = "<html>" + "x" * (200 - 6 - 10) + token + "</html>"
    response = Response(403, {}, page, "http://127.0.0.1/x")
    with pytest.raises(ClearliftError) as info:
        tiktok.classify(response, None)
    assert token[:8] not in str(info.value) and str(info.value).startswith("tiktok: HTTP 403 ")


def test_an_answers_url_is_shown_redacted():
    # redacted when read (most answers are never shown): what it shows is as before
    response = Response(200, {}, "", "https://graph.example/v1/act_1?access_token=EAAB1234567890abc&x=1")
    assert response.url == "https://graph.example/v1/act_1?access_token=***&x=1"
    assert "EAAB" not in response.url
