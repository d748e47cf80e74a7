"""Retry hints are clamped to a sane range (issue 16)."""

from __future__ import annotations

import math

import pytest

from clearlift_cli.errors import (
    RETRY_HINT_CEILING_SECONDS,
    RETRY_HINT_FLOOR_SECONDS,
    RateLimited,
    clamp_retry_hint,
)
from clearlift_cli.timeutil import iso_from_epoch


@pytest.mark.parametrize(
    "hint, seconds",
    [
        (0, RETRY_HINT_FLOOR_SECONDS),
        (-5, RETRY_HINT_FLOOR_SECONDS),
        (math.nan, RETRY_HINT_FLOOR_SECONDS),
        ("not a number", RETRY_HINT_FLOOR_SECONDS),
        (None, RETRY_HINT_FLOOR_SECONDS),
        (0.5, RETRY_HINT_FLOOR_SECONDS),
        (1, 1.0),
        (40, 40.0),
        (3600.5, 3600.5),
        (1e12, RETRY_HINT_CEILING_SECONDS),
        (math.inf, RETRY_HINT_CEILING_SECONDS),
        (10**400, RETRY_HINT_CEILING_SECONDS),
        (-math.inf, RETRY_HINT_FLOOR_SECONDS),
    ],
)
def test_hints_are_held_between_the_floor_and_the_ceiling(hint, seconds):
    assert clamp_retry_hint(hint) == seconds
    assert RateLimited("limited", retry_after=hint).retry_after == seconds


def test_the_range_is_one_second_to_one_day():
    assert (RETRY_HINT_FLOOR_SECONDS, RETRY_HINT_CEILING_SECONDS) == (1.0, 86_400.0)


def test_far_future_epochs_are_shown_not_crashed_on():
    assert iso_from_epoch(0) == "1970-01-01T00:00:00.000Z"
    assert iso_from_epoch(1e12) == "9999-12-31T23:59:59.999Z"
    assert iso_from_epoch(-1e12) == "0001-01-01T00:00:00.000Z"
