"""Deterministic sandbox data: the same account id always yields the same campaigns and
the same numbers, so tests can say exactly what the warehouse must hold."""

from __future__ import annotations

import hashlib
import random
from datetime import date, timedelta


def rng(*parts: object) -> random.Random:
    """A random generator seeded by ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def days(since: date, until: date):
    d = since
    while d <= until:
        yield d
        d += timedelta(days=1)
