"""Issue 16, the library: a consumer that is stopping keeps renewing its running jobs' leases
(no one runs them twice), and every request has a total deadline, to the next element of a
streamed answer too. Real SQLite files, the sandboxes over loopback HTTP, consumers as
threads over the same store file."""

from __future__ import annotations

import json
import threading
import time

import pytest

from clearlift_cli import commands
from clearlift_cli.consumer import Consumer
from clearlift_cli.settings import resolve
from tests.expected import assert_job_landed_exactly
from tests.harness import Env, queue_row, seed, wait_for

# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


def consumer(env: Env, owner: str, lease: float) -> Consumer:
    settings = resolve(environ=env.environ(), read_config=False)
    return Consumer(settings, commands.store_for(settings), owner=owner, lease_seconds=lease)


@pytest.mark.parametrize("stop", ["max-seconds", "signal"])
def test_a_stopping_consumer_renews_its_running_jobs_lease_so_no_one_runs_it_twice(env, sandbox, stop):
    cid = seed(env, "google", "1234567890")
    env.run("schedule")
    (job,) = env.jobs(cid)
    sandbox.google.faults.add("latency", path="googleAds", times=1, seconds=4)  # the job takes ~4 s
    lease = 1.5
    first = consumer(env, "first", lease)
    results = []
    runner = threading.Thread(
        target=lambda: results.append(
            first.run(concurrency=1, max_seconds=0.2 if stop == "max-seconds" else None)
        )
    )
    runner.start()
    try:
        wait_for(lambda: sandbox.google.requests, 10, "the first consumer's first request")
        if stop == "signal":
            first.stop()  # what the SIGTERM handler calls
        # Stopped: no longer claiming. Wait until its lease would have run out twice over had
        # it stopped renewing it, while the job is still running.
        time.sleep(2 * lease + 0.2)
        assert runner.is_alive() and queue_row(env, job["id"])["state"] == "leased"
        second = consumer(env, "second", lease)
        try:
            assert second.run(concurrency=1, max_seconds=5).outcomes == []
        finally:
            second.store.close()
    finally:
        runner.join(timeout=30)
        first.store.close()
    (result,) = results
    assert result.stopped_by == stop and [o.status for o in result.outcomes] == ["completed"]
    row = queue_row(env, job["id"])
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("done", 1, "first")
    assert len(sandbox.google.requests) == 3  # account, campaigns, metrics: one job's worth
    assert_job_landed_exactly(env, "google", cid, job["id"])


def test_a_body_sent_one_byte_at_a_time_is_cut_at_the_requests_total_deadline(sandbox):
    from clearlift_cli.errors import TransientError
    from clearlift_cli.platforms.http import HttpClient

    http = HttpClient(platform="google", timeout=1.0, attempts=1)
    url = sandbox.servers["google"].base_url + "/v26/customers/1234567890/googleAds:searchStream"
    whole = http.request("POST", url, classify=lambda r, b: None)  # an error answer, a few hundred bytes
    assert len(json.dumps(whole)) > 100
    sandbox.google.faults.add("slow_body", path="googleAds", times=1, seconds=0.05)  # 20 bytes a second
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out after 1s \(its whole deadline") as info:
        http.request("POST", url, classify=lambda r, b: None)
    assert 0.9 < time.monotonic() - t0 < 2.0  # not the many seconds the whole body takes
    assert "CLEARLIFT_HTTP_TIMEOUT" in str(info.value)
    # The cut connection is not reused: the next request on this thread's session is fine.
    again = http.request("POST", url, classify=lambda r, b: None)
    assert again[0]["error"]["message"] == whole[0]["error"]["message"]


def test_a_streamed_answer_that_stalls_is_cut_when_its_next_element_is_late(sandbox, tmp_path):
    # Google's searchStream is read element by element: the deadline runs to each element.
    from clearlift_cli.errors import TransientError
    from clearlift_cli.platforms import google
    from clearlift_cli.platforms.base import Credentials, PlatformContext
    from clearlift_cli.sandbox import APP_CREDENTIALS
    from clearlift_cli.settings import ENV_NAMES

    sandbox.google.batch_size = 1  # one campaign per element, ~350 bytes each
    sandbox.google.configure_account("1234567890", campaigns=600)
    by_env = {env: name for name, env in ENV_NAMES.items()}
    flags = {by_env[k]: v for k, v in APP_CREDENTIALS.items() if k.startswith("GOOGLE")}
    settings = resolve(
        flags={
            **flags,
            "home": str(tmp_path),
            "google_ads_url": sandbox.servers["google"].base_url,
            "google_oauth_url": sandbox.servers["google"].base_url,
            "http_timeout": 1,
        },
        environ={},
    )
    access, _ = sandbox.google.tokens.issue(ttl=3600)
    ctx = PlatformContext(settings=settings, account_id="1234567890", connection_settings={})
    client = google.GoogleAdsClient(ctx, Credentials(access_token=access))
    whole = len(list(client.campaigns()))  # those not REMOVED
    assert whole >= 300
    # 100 kB at once (the reader takes 64 KiB at a time), then a byte every 50 ms.
    sandbox.google.faults.add("slow_body", path="searchStream", times=-1, seconds=0.05, size=100_000)
    got, t0 = [], time.monotonic()
    with pytest.raises(TransientError, match=r"timed out after 1s \(its whole deadline"):
        for campaign in client.campaigns():
            got.append(campaign)
    assert 0 < len(got) < whole  # the first elements came, then the stalled one was cut
    assert time.monotonic() - t0 < 3
