"""The retry backoff: doubling from its base with jitter, never above its cap."""

from __future__ import annotations

import random

from clearlift_cli.store.queue import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, backoff_seconds


def test_retry_backoff_doubles_with_jitter_and_stays_under_its_cap():
    # the poison-job path itself (1 + 3 attempts, dead letter, re-queue) is in tests/integration/test_queue.py
    rng = random.Random(9)
    for attempts in range(1, 40):
        base = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempts - 1))
        delays = [backoff_seconds(attempts, rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays), attempts
        assert max(delays) - min(delays) > base / 4  # jittered, not one fixed delay
    assert base == BACKOFF_CAP_SECONDS == 900
