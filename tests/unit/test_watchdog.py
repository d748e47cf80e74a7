"""The request-deadline watchdog: one thread, woken only when a new deadline comes first."""

from __future__ import annotations

import threading
import time

from clearlift_cli.platforms.deadline import _Watchdog


def test_an_earlier_deadline_scheduled_later_still_fires_on_time():
    watchdog = _Watchdog()
    late, early = threading.Event(), threading.Event()
    watchdog.schedule(time.monotonic() + 3600, late.set)
    time.sleep(0.2)  # the thread now waits for that deadline, an hour away
    start = time.monotonic()
    watchdog.schedule(time.monotonic() + 0.05, early.set)
    assert early.wait(5), "the earlier deadline must wake the waiting thread"
    assert time.monotonic() - start < 5
    assert not late.is_set()


def test_a_later_deadline_waits_its_turn_and_a_cancelled_one_never_fires():
    watchdog = _Watchdog()
    fired: list[str] = []
    cancelled = watchdog.schedule(time.monotonic() + 0.05, lambda: fired.append("cancelled"))
    watchdog.schedule(time.monotonic() + 0.1, lambda: fired.append("first"))
    done = threading.Event()
    watchdog.schedule(time.monotonic() + 0.2, lambda: (fired.append("second"), done.set()))
    watchdog.cancel(cancelled)
    time.sleep(0.02)  # scheduled while the thread waits for the cancelled one
    watchdog.schedule(time.monotonic() + 0.01, lambda: fired.append("zeroth"))
    assert done.wait(5)
    assert fired == ["zeroth", "first", "second"]
