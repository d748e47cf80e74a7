"""A connection's own settings (the ``settings`` JSON column of ``platform_connections``),
read and checked in one place for ``schedule``, ``status`` and ``connections add``.

The API worker writes this column and clearlift trusts none of it: one row with a
``sync_interval_minutes`` of ``1e10`` or ``Infinity`` once overflowed date arithmetic and
stopped ``schedule`` for every connection. Values outside the ranges below are refused
with a message naming the column and the key; the caller skips that one connection and
reports it. What clearlift writes is JSON the worker's ``JSON.parse`` reads: no ``NaN``,
no ``Infinity``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DEFAULT_INTERVAL_MINUTES = 60
# The scheduler runs every 15 minutes, so shorter intervals only mean "every run"; a
# connection synced less often than monthly should be paused instead.
MIN_INTERVAL_MINUTES = 1
MAX_INTERVAL_MINUTES = 30 * 24 * 60
# Re-reading more than a year on every incremental job is never what anyone meant.
MAX_LOOKBACK_DAYS = 365
# The longest conversion windows the platforms offer: Google Ads 90 days (click-through),
# Meta and TikTok 28 days or less.
MAX_ATTRIBUTION_WINDOW_DAYS = 90


class SettingsError(ValueError):
    """The settings column cannot be used; the message names the column and the key."""


@dataclass(frozen=True)
class ConnectionSettings:
    sync_interval_minutes: float
    lookback_days: int | None  # None: the configured or platform default
    attribution_window_days: int | None  # None: the platform default; 0: never


def parse(text: str | None) -> dict[str, Any]:
    """The settings column as a dict; SettingsError when it is not a JSON object."""
    try:
        value = json.loads(text or "{}")
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"settings column is not valid JSON ({exc})") from None
    except RecursionError:
        raise SettingsError("settings column is not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise SettingsError(f"settings column is not a JSON object (it is a JSON {type(value).__name__})")
    return value


def _number(values: dict[str, Any], key: str) -> float | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"settings.{key} must be a number, not {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"settings.{key} must be a finite number, not {_show(value)}")
    return value


def _whole_days(values: dict[str, Any], key: str, high: int) -> int | None:
    value = _number(values, key)
    if value is None:
        return None
    if value != int(value) or not 0 <= value <= high:
        raise SettingsError(
            f"settings.{key} must be a whole number of days from 0 to {high}, not {_show(value)}"
        )
    return int(value)


def check(values: dict[str, Any]) -> ConnectionSettings:
    """The settings clearlift acts on, each within its range; SettingsError otherwise."""
    interval = _number(values, "sync_interval_minutes")
    if interval is None:
        interval = DEFAULT_INTERVAL_MINUTES
    elif not MIN_INTERVAL_MINUTES <= interval <= MAX_INTERVAL_MINUTES:
        raise SettingsError(
            f"settings.sync_interval_minutes must be from {MIN_INTERVAL_MINUTES} to "
            f"{MAX_INTERVAL_MINUTES} minutes (30 days), not {_show(interval)}"
        )
    lookback = _whole_days(values, "lookback_days", MAX_LOOKBACK_DAYS)
    attribution = _whole_days(values, "attribution_window_days", MAX_ATTRIBUTION_WINDOW_DAYS)
    if _holds_non_finite(values):
        raise SettingsError("settings column holds NaN or Infinity, which JSON does not allow")
    return ConnectionSettings(float(interval), lookback, attribution)


@lru_cache(maxsize=1024)
def load(text: str | None) -> ConnectionSettings:
    """``check(parse(text))``: what ``schedule`` and ``status`` use (cached by text: most
    connections share a handful of settings, and ``status`` reads every one)."""
    return check(parse(text))


def _holds_non_finite(value: Any) -> bool:
    stack = [value]  # iterative: parsed JSON may nest deeper than Python's recursion limit
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def dumps(values: dict[str, Any]) -> str:
    """Settings as the store keeps them (strict JSON: the API worker must read it back)."""
    return json.dumps(values, allow_nan=False)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = [
    "ConnectionSettings",
    "SettingsError",
    "check",
    "dumps",
    "load",
    "parse",
    "DEFAULT_INTERVAL_MINUTES",
    "MAX_INTERVAL_MINUTES",
    "MAX_LOOKBACK_DAYS",
    "MAX_ATTRIBUTION_WINDOW_DAYS",
]
