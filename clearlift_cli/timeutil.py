"""Timestamps and the clock.

The store holds timestamps in two spellings: JavaScript ISO strings written by the API
worker (``2025-10-10T20:45:30.123Z``) and SQLite defaults (``2025-10-10 20:45:30``). Both
are read as UTC and compared as values, never as text. We write exactly what JavaScript's
``toISOString()`` writes. The clock is the one thing tests may replace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

UTC = UTC


def parse_ts(value: str | datetime | None) -> datetime | None:
    """Parse either spelling (or an ISO string with an offset) into an aware UTC datetime.

    Raises ``ValueError`` for text that is not a timestamp."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before the year 1 in UTC
        raise ValueError(f"{_short(text)} is out of the range of dates") from None


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def iso_z(dt: datetime) -> str:
    """Format like JavaScript's ``Date.prototype.toISOString()``: UTC, milliseconds, Z."""
    if dt.tzinfo is not None and dt.utcoffset():
        dt = dt.astimezone(UTC)
    # isoformat truncates to milliseconds as JavaScript does, and pads the year to 4 digits
    return dt.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def to_epoch(dt: datetime) -> float:
    return dt.timestamp()


def from_epoch(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def iso_from_epoch(epoch: float) -> str:
    """``iso_z`` of an epoch, held to the years a datetime can spell (a far-future value
    written by an older version or another tool is shown, never a crash)."""
    try:
        return iso_z(from_epoch(epoch))
    except (OverflowError, OSError, ValueError):
        return iso_z(datetime.min.replace(tzinfo=UTC) if epoch < 0 else datetime.max.replace(tzinfo=UTC))


def julian_day(dt: datetime) -> float:
    """SQLite's julianday() of an aware datetime (what the store's due/expiry indexes hold)."""
    return dt.timestamp() / 86400.0 + 2440587.5


class Clock:
    """Wall clock. ``now()`` is aware UTC; ``monotonic()`` for durations."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FrozenClock(Clock):
    """A clock that only moves when told to (for tests); ``sleep`` advances it."""

    def __init__(self, start: datetime):
        self._now = start if start.tzinfo else start.replace(tzinfo=UTC)
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def time(self) -> float:
        return self.now().timestamp()

    def monotonic(self) -> float:
        return self.time()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds > 0:
            self.advance(seconds)


SYSTEM_CLOCK = Clock()


def date_runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """Sorted runs of consecutive dates, each as (first, last)."""
    out: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if out and day == out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out
