"""Which sync's data the warehouse keeps when hosts disagree about the time (issue 16).

Two consumers share one store and one PostgreSQL warehouse and talk to the Google sandbox
over HTTP; only their clocks differ (host A runs an hour ahead). The later sync's data
must stay whatever the clocks say: writes are ordered by the store's claim sequence."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from clearlift_cli import commands
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import Clock


class SkewedClock(Clock):
    """The wall clock of a host whose time is off by ``offset``."""

    def __init__(self, offset: timedelta):
        self.offset = offset

    def now(self) -> datetime:
        return super().now() + self.offset

    def time(self) -> float:
        return super().time() + self.offset.total_seconds()


def test_a_host_whose_clock_runs_ahead_never_hides_a_later_sync(env, sandbox):
    google = sandbox.google
    google.configure_account("1234567890", campaigns=3, removed=0, currency="USD")
    token, _ = google.tokens.issue(ttl=None)
    cid = env.add("org-1", "google", "1234567890", token)
    settings = resolve(environ=env.environ(), read_config=False)
    host_a = SkewedClock(timedelta(hours=1))
    host_b = SkewedClock(timedelta(0))
    until = date.today() - timedelta(days=1)
    since = until - timedelta(days=4)

    commands.sync_now(settings, cid, since=since, until=until)
    first = commands.consume(settings, clock=host_a)  # host A: an hour ahead
    assert first.counts() == {"completed": 1}, first.outcomes

    google.configure_account("1234567890", currency="EUR")  # the account changed since
    commands.sync_now(settings, cid, since=since, until=until)
    before_b = datetime.now(UTC)
    second = commands.consume(settings, clock=host_b)  # host B: the right time, an hour "earlier"
    assert second.counts() == {"completed": 1}, second.outcomes

    metrics = env.warehouse_rows("google_ads_daily_metrics", organization_id="org-1")
    campaigns = env.warehouse_rows("google_ads_campaigns", organization_id="org-1")
    assert metrics and len(campaigns) == 3
    assert {r["currency"] for r in metrics + campaigns} == {"EUR"}  # host B's, the later sync
    assert all(before_b <= r["last_synced_at"] < before_b + timedelta(minutes=10) for r in metrics)

    # Each job counted the rows it wrote, once each: the second rewrote every row.
    jobs = env.jobs(cid)
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    for job in jobs:
        assert job["records_synced"] == len(metrics) + len(campaigns)
        assert json.loads(job["metadata"])["records_synced"] == job["records_synced"]
