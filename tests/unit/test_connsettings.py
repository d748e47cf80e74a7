"""A connection's settings column: what `schedule`, `status` and `connections add` accept."""

from __future__ import annotations

import json

import pytest

from clearlift_cli import connsettings
from clearlift_cli.connsettings import SettingsError


@pytest.mark.parametrize(
    "text, interval, lookback, attribution",
    [
        (None, 60.0, None, None),
        ("{}", 60.0, None, None),
        ('{"sync_interval_minutes": 30, "lookback_days": 5}', 30.0, 5, None),
        ('{"sync_interval_minutes": 7.5, "attribution_window_days": 28.0}', 7.5, None, 28),
        ('{"sync_interval_minutes": 43200, "lookback_days": 0, "attribution_window_days": 0}', 43200.0, 0, 0),
        ('{"lookback_days": 365, "attribution_window_days": 90, "other": "kept"}', 60.0, 365, 90),
        ('{"lookback_days": null}', 60.0, None, None),
    ],
)
def test_values_in_range_are_read(text, interval, lookback, attribution) -> None:
    got = connsettings.load(text)
    assert (got.sync_interval_minutes, got.lookback_days, got.attribution_window_days) == (
        interval,
        lookback,
        attribution,
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"sync_interval_minutes": 1e10}', "settings.sync_interval_minutes must be from 1 to 43200"),
        (
            '{"sync_interval_minutes": Infinity}',
            "settings.sync_interval_minutes must be a finite number, not inf",
        ),
        ('{"sync_interval_minutes": NaN}', "settings.sync_interval_minutes must be a finite number, not nan"),
        ('{"sync_interval_minutes": 1e400}', "settings.sync_interval_minutes must be a finite number"),
        (
            '{"sync_interval_minutes": "three"}',
            "settings.sync_interval_minutes must be a number, not 'three'",
        ),
        ('{"sync_interval_minutes": true}', "settings.sync_interval_minutes must be a number"),
        ('{"sync_interval_minutes": 0}', "settings.sync_interval_minutes must be from 1"),
        ('{"sync_interval_minutes": -5}', "settings.sync_interval_minutes must be from 1"),
        (
            '{"lookback_days": 10000000}',
            "settings.lookback_days must be a whole number of days from 0 to 365",
        ),
        ('{"lookback_days": 2.5}', "settings.lookback_days must be a whole number"),
        ('{"lookback_days": -1}', "settings.lookback_days must be a whole number"),
        ('{"lookback_days": "three"}', "settings.lookback_days must be a number"),
        (
            '{"attribution_window_days": 100000000}',
            "settings.attribution_window_days must be a whole number of days from 0 to 90",
        ),
        ('{"usage_throttle_pct": NaN}', "settings column holds NaN or Infinity"),
        ('{"nested": {"x": -Infinity}}', "settings column holds NaN or Infinity"),
        ("{not json", "settings column is not valid JSON (Expecting property name"),
        ("[1, 2]", "settings column is not a JSON object (it is a JSON list)"),
        ('"{}"', "settings column is not a JSON object (it is a JSON str)"),
    ],
)
def test_values_out_of_range_name_the_column_and_the_key(text, says) -> None:
    with pytest.raises(SettingsError) as info:
        connsettings.load(text)
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)  # callers that skip broken rows catch ValueError


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(SettingsError) as info:
        connsettings.load('{"lookback_days": "%s"}' % ("x" * 500))
    assert len(str(info.value)) < 120


def test_what_clearlift_writes_is_strict_json() -> None:
    assert connsettings.dumps({"sync_interval_minutes": 30}) == '{"sync_interval_minutes": 30}'
    with pytest.raises(ValueError):
        connsettings.dumps({"sync_interval_minutes": float("inf")})


def test_job_metadata_clearlift_rewrites_stays_strict_json() -> None:
    from clearlift_cli.store import with_records as _with_records

    out = _with_records('{"ratio": NaN, "kept": 1}', 7)  # JSON.parse would refuse the whole text
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} written")) == {"records_synced": 7}
    assert json.loads(_with_records('{"kept": 1}', 7)) == {"kept": 1, "records_synced": 7}


def test_settings_nested_too_deeply_are_a_settings_error_not_a_crash() -> None:
    with pytest.raises(SettingsError, match="nested too deeply"):
        connsettings.load("[" * 100_000 + "]" * 100_000)
