"""Timestamps in both spellings the store holds (JavaScript's ISO with Z, SQLite's
'YYYY-MM-DD HH:MM:SS' in UTC): parsed to the same instant, compared by value, written as
JavaScript writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from clearlift_cli.timeutil import iso_z, parse_ts


def test_both_spellings_parse_to_the_same_instant():
    js = parse_ts("2025-10-10T20:45:30.000Z")
    sql = parse_ts("2025-10-10 20:45:30")
    assert js == sql == datetime(2025, 10, 10, 20, 45, 30, tzinfo=UTC)
    assert js.tzinfo is not None and sql.utcoffset() == timedelta(0)
    assert parse_ts("2025-10-10T22:45:30+02:00") == js
    assert parse_ts("2025-10-10T20:45:30.123Z") == js + timedelta(milliseconds=123)


def test_mixed_spellings_compare_by_value_not_text():
    # As text "2025-10-10 21:00:00" < "2025-10-10T20:00:00.000Z" (space sorts before T).
    later_sql, earlier_js = "2025-10-10 21:00:00", "2025-10-10T20:00:00.000Z"
    assert later_sql < earlier_js
    assert parse_ts(later_sql) > parse_ts(earlier_js)
    spellings = [
        "2025-10-10T20:00:00.500Z",
        "2025-10-10 20:00:00",
        "2025-10-09T23:59:59.999Z",
        "2025-10-10 19:59:59",
        "2025-10-10T20:00:01.000Z",
    ]
    ordered = sorted(spellings, key=parse_ts)
    assert ordered == [
        "2025-10-09T23:59:59.999Z",
        "2025-10-10 19:59:59",
        "2025-10-10 20:00:00",
        "2025-10-10T20:00:00.500Z",
        "2025-10-10T20:00:01.000Z",
    ]


def test_iso_z_writes_what_javascript_writes():
    assert iso_z(datetime(2025, 10, 10, 20, 45, 30, 123456, tzinfo=UTC)) == "2025-10-10T20:45:30.123Z"
    assert iso_z(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05.000Z"
    plus_two = timezone(timedelta(hours=2))
    assert iso_z(datetime(2025, 1, 1, 1, 0, 0, tzinfo=plus_two)) == "2024-12-31T23:00:00.000Z"
    assert parse_ts(iso_z(datetime(2025, 6, 1, 12, 0, 0, 999000, tzinfo=UTC))) == datetime(
        2025, 6, 1, 12, 0, 0, 999000, tzinfo=UTC
    )


def test_unparseable_timestamp_is_a_value_error():
    for text in ("yesterday", "2025-13-01 00:00:00", "10/10/2025"):
        with pytest.raises(ValueError):
            parse_ts(text)
    assert parse_ts(None) is None and parse_ts("") is None
