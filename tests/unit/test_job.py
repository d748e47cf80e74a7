"""One job's run state and the pure pieces of its sync (clearlift_cli/job.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from clearlift_cli.errors import AccountUnavailable, PermanentError, TransientError
from clearlift_cli.job import ProgressThrottle, accounts_failed, date_slices, window_days
from clearlift_cli.models import SyncWindow


def test_date_slices_cover_the_days_once_in_order():
    slices = date_slices(date(2024, 1, 1), date(2024, 1, 10), 4)
    assert slices == [
        (date(2024, 1, 1), date(2024, 1, 4)),
        (date(2024, 1, 5), date(2024, 1, 8)),
        (date(2024, 1, 9), date(2024, 1, 10)),
    ]


def test_date_slices_without_a_limit_is_one_slice():
    assert date_slices(date(2024, 1, 1), date(2024, 3, 1), None) == [(date(2024, 1, 1), date(2024, 3, 1))]
    assert date_slices(date(2024, 1, 1), date(2024, 3, 1), 0) == [(date(2024, 1, 1), date(2024, 3, 1))]


def test_date_slices_of_one_day():
    assert date_slices(date(2024, 2, 29), date(2024, 2, 29), 30) == [(date(2024, 2, 29), date(2024, 2, 29))]


def window(start: datetime, end: datetime) -> SyncWindow:
    return SyncWindow(start, end)


def test_a_window_ending_at_midnight_stops_the_day_before():
    w = window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC))
    assert window_days(w) == (date(2024, 5, 1), date(2024, 5, 7))


def test_a_window_ending_during_a_day_covers_that_day():
    w = window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, 0, 0, 1, tzinfo=UTC))
    assert window_days(w) == (date(2024, 5, 1), date(2024, 5, 8))


def test_an_empty_window_still_covers_its_first_day():
    t = datetime(2024, 5, 1, tzinfo=UTC)
    assert window_days(window(t, t)) == (date(2024, 5, 1), date(2024, 5, 1))


def test_the_throttle_lets_a_write_through_once_per_interval_from_its_start():
    throttle = ProgressThrottle(1.0, start=100.0)
    assert not throttle.due(100.5)  # a short job writes nothing
    assert throttle.due(101.0)
    assert not throttle.due(101.9)  # counted from the last write, not from the start
    assert throttle.due(102.0)
    assert throttle.due(110.0)


def test_a_throttle_of_zero_lets_every_write_through():
    throttle = ProgressThrottle(0.0, start=5.0)
    assert all(throttle.due(5.0) for _ in range(3))


def test_accounts_failed_is_transient_when_every_failure_is():
    error = accounts_failed(
        "google", ["1", "2", "3"], {"2": TransientError("HTTP 503"), "3": TransientError("timeout")}, 42
    )
    assert type(error) is TransientError
    assert error.platform == "google"
    assert str(error) == (
        "google: 2 of 3 accounts failed (1 synced, 42 records written): "
        "account 2: HTTP 503; account 3: timeout"
    )


def test_accounts_failed_is_permanent_when_any_failure_is():
    failed = {
        "9": AccountUnavailable("account 9 is not linked to the manager", platform="google", account_id="9"),
        "7": TransientError("HTTP 503", platform="google"),
    }
    error = accounts_failed("google", ["1", "9", "7"], failed, 0)
    assert type(error) is PermanentError  # retrying cannot link account 9 again
    assert str(error).startswith("google: 2 of 3 accounts failed (1 synced, 0 records written): ")
