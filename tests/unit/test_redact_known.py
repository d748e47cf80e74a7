"""Registered secrets: every occurrence masked, the longer of two that start at the same place
masked whole, and as many as a long consumer run registers (a token pair per connection)."""

from __future__ import annotations

import secrets

import pytest

from clearlift_cli import redact as redaction
from clearlift_cli.redact import MASK, redact


@pytest.fixture(autouse=True)
def _own_secrets():
    """This process's registered secrets, as they were before the test."""
    saved = redaction.known()
    redaction.forget_all_but(frozenset())
    yield
    redaction.forget_all_but(saved)


def test_every_occurrence_of_each_registered_secret_is_masked():
    redaction.register("Qx7tok3nAAAA", "Qx7tok3nAAAA", None, "", "short")
    text = "Qx7tok3nAAAA, then again:Qx7tok3nAAAA! and 'short' stays"
    assert redact(text) == f"{MASK}, then again:{MASK}! and 'short' stays"


def test_of_two_secrets_that_start_alike_the_one_present_is_masked_whole():
    redaction.register("Zq81secretA", "Zq81secretA-and-more")
    assert redact("a Zq81secretA-and-more b Zq81secretA c Zq81secre") == f"a {MASK} b {MASK} c Zq81secre"


def test_secrets_next_to_each_other_and_at_either_end():
    redaction.register("HeadTok9aaa", "TailTok9bbb")
    assert redact("HeadTok9aaaTailTok9bbb") == MASK + MASK
    assert redact("xHeadTok9aaa") == f"x{MASK}" and redact("TailTok9bbbx") == f"{MASK}x"


def test_twenty_thousand_registered_tokens_are_each_masked():
    tokens = [secrets.token_urlsafe(30) for _ in range(20_000)]
    for access, refresh in zip(tokens[::2], tokens[1::2], strict=True):
        redaction.register(access, refresh)
    assert redaction.known() == frozenset(tokens)
    for token in tokens[::997]:
        assert redact(f"HTTP 401 for Bearer-less {token}.") == f"HTTP 401 for Bearer-less {MASK}."
    assert redact("nothing secret here") == "nothing secret here"


def test_forgetting_leaves_exactly_the_given_secrets():
    redaction.register("KeepMe123456", "DropMe123456")
    redaction.forget_all_but(frozenset({"KeepMe123456"}))
    assert redact("KeepMe123456 DropMe123456") == f"{MASK} DropMe123456"


def test_tokens_sharing_a_long_prefix_are_each_masked_and_only_whole():
    """Google's access tokens all start "ya29.a0A": the index must still tell them apart."""
    prefix = "ya29.a0AfB_byC"
    tokens = [prefix + secrets.token_urlsafe(40) for _ in range(5_000)]
    redaction.register(*tokens, prefix + "short")
    for token in tokens[::499]:
        assert redact(f"token={token[:-1]} and {token}") == f"token={token[:-1]} and {MASK}"
    assert redact(f"{prefix}short{prefix}") == f"{MASK}{prefix}"
