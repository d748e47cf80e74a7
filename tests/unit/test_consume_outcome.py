"""The consumer's outcome statuses and its loop's stop decisions (no store, no threads)."""

from __future__ import annotations

import json

from clearlift_cli.consumer import ConsumeResult, JobOutcome, Outcome, _Run


def test_outcomes_are_spelt_as_before_in_json_and_text():
    assert [o.value for o in Outcome] == [
        "completed",
        "retry",
        "deferred",
        "released",
        "failed",
        "dropped",
        "stale",
    ]
    result = ConsumeResult(
        [
            JobOutcome("j1", "c1", "facebook", Outcome.COMPLETED, records=3),
            JobOutcome("j2", "c1", "facebook", Outcome.STALE),
            JobOutcome("j3", "c2", "stripe", Outcome.COMPLETED, records=4),
        ],
        stopped_by="max-jobs",
    )
    assert json.dumps(result.summary()) == (
        '{"jobs": 3, "completed": 2, "stale": 1, "records": 7, "stopped_by": "max-jobs"}'
    )
    assert str(Outcome.DEFERRED) == f"{Outcome.DEFERRED}" == "deferred"  # as log lines show it
    assert Outcome.FAILED == "failed"


def run(**limits) -> _Run:
    defaults = dict(max_jobs=None, max_seconds=None, concurrency=4, only_job=None, stop_grace=30.0)
    return _Run(**{**defaults, **limits}, started=1000.0)


def test_a_signal_outranks_every_limit():
    r = run(max_jobs=1, max_seconds=5)
    r.claimed_total = 1
    assert r.stop_reason(2000.0, signalled=True) == "signal"
    assert r.stop_reason(2000.0, signalled=False) == "max-seconds"
    assert r.stop_reason(1001.0, signalled=False) == "max-jobs"


def test_no_limit_no_stop():
    r = run()
    r.claimed_total = 10_000
    assert r.stop_reason(10**9, signalled=False) is None


def test_room_is_bounded_by_concurrency_and_max_jobs():
    r = run(concurrency=4, max_jobs=6)
    assert r.room() == 4
    r.claimed_total = 4
    assert r.room() == 2
    r.in_flight.update({object(): None, object(): None, object(): None})  # type: ignore[dict-item]
    assert r.room() == 1
    r.claimed_total = 6
    assert r.room() == 0
