"""Two `clearlift refresh-tokens` processes at once on one connection: both refresh, the
compare-and-set keeps one token, and the stored expiry belongs to the stored token."""

from __future__ import annotations

import json
import subprocess

import pytest

from clearlift_cli.timeutil import parse_ts
from tests.harness import CLEARLIFT
from tests.helpers import in_seconds

CID = "123-456-7890"


def token_calls(sandbox) -> list:
    return sandbox.google.requests_to(r"^/token$")


@pytest.fixture
def env(recording_env):
    """Every command's output and the stored texts are checked for secrets at the end."""
    return recording_env


def test_concurrent_runs_leave_the_newest_token(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=120)
    cid = env.seed("org-1", "google", CID, access, refresh, expires_at=in_seconds(120))
    # The first /token call is answered last, so both runs hold grants before either writes.
    sandbox.google.faults.add("latency", path=r"^/token$", times=1, seconds=1.6)
    sandbox.google.faults.add("latency", path=r"^/token$", times=1, seconds=0.1)

    procs = [
        subprocess.Popen(
            [CLEARLIFT, "refresh-tokens", "--json"],
            env=env.environ(),
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [(p.communicate(timeout=60), p.returncode) for p in procs]
    env.outputs += [out + err for (out, err), _ in results]
    assert [rc for _, rc in results] == [0, 0]
    assert [json.loads(out)["refreshed"] for (out, _), _ in results] == [1, 1]
    assert len(token_calls(sandbox)) == 2  # the runs overlapped: both refreshed from the same row
    # Exactly one write lost the compare-and-set and kept the other's token.
    assert sum("refreshed concurrently" in err for (_, err), _ in results) == 1

    row = env.connection(cid)
    token = env.token(cid)
    assert token != access and sandbox.google.tokens.check(token) == "ok"
    # The stored expires_at belongs to the stored token (the other grant expires 1.5 s later).
    expiry = parse_ts(row["expires_at"]).timestamp()
    authority = sandbox.google.tokens
    real_clock = authority.clock
    try:
        authority.clock = lambda: expiry - 0.5
        assert authority.check(token) == "ok"
        authority.clock = lambda: expiry + 0.5
        assert authority.check(token) == "expired"
    finally:
        authority.clock = real_clock
