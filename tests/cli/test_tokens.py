"""The token lifecycle (issue 6) through the command, in-process: `clearlift refresh-tokens`,
refresh on demand, re-auth flags, transient failures. Against the sandboxes over loopback
HTTP and a real SQLite store; every command's output and the stored texts are checked for
secrets. The library-level checks are in tests/integration/test_tokens.py, two processes
at once in tests/e2e/test_tokens.py."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli.sandbox import APP_CREDENTIALS, Sandbox
from clearlift_cli.timeutil import parse_ts
from tests.harness import Env, RecordingEnv
from tests.helpers import SANDBOX_TOKEN_SHAPE, assert_no_secrets, in_seconds

UTC = UTC
CID = "123-456-7890"
GOOGLE_TTL = 3599  # what the Google sandbox's /token grants
FACEBOOK_TTL = 5183944  # what the Facebook sandbox's exchange grants
UNAUTHENTICATED = {
    "error": {
        "code": 401,
        "status": "UNAUTHENTICATED",
        "message": "Request had invalid authentication credentials.",
    }
}


@pytest.fixture
def env(recording_env):
    """Every command's output and the stored texts are checked for secrets at the end."""
    return recording_env


def near(value: str, expected: datetime, tolerance: float = 5.0) -> bool:
    return abs((parse_ts(value) - expected).total_seconds()) <= tolerance


def token_calls(sandbox) -> list:
    return sandbox.google.requests_to(r"^/token$")


def bearers(app, pattern: str = "googleAds") -> list[str]:
    return [r.headers.get("authorization", "")[len("Bearer ") :] for r in app.requests_to(pattern)]


def refresh_json(env: RecordingEnv, *args: str, **more: str) -> dict:
    proc = env.run("-v", "refresh-tokens", "--json", *args, **more)
    return json.loads(proc.stdout)


def test_token_two_minutes_from_expiry_is_refreshed_and_next_consume_uses_it(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=120)
    cid = env.add("org-1", "google", CID, access, refresh, expires_at=in_seconds(120))
    before = env.connection(cid)

    out = env.run("-vv", "refresh-tokens").stdout
    assert "refresh-tokens: 1 refreshed, 0 skipped, 0 failed (0 need re-auth)" in out
    after = env.connection(cid)
    new = env.token(cid)
    assert after["credentials_encrypted"] != before["credentials_encrypted"]
    assert new != access and sandbox.google.tokens.check(new) == "ok"
    assert all(SANDBOX_TOKEN_SHAPE.fullmatch(t) for t in (access, refresh, new))  # the leak check sees them
    assert env.token(cid, "refresh_token_encrypted") == refresh  # Google did not rotate it: kept
    assert near(after["expires_at"], datetime.now(UTC) + timedelta(seconds=GOOGLE_TTL))
    (call,) = token_calls(sandbox)
    form = call.form()
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == refresh
    assert form["client_id"] == APP_CREDENTIALS["GOOGLE_CLIENT_ID"]

    # No longer due: a second run leaves it alone.
    assert "0 refreshed, 0 skipped, 0 failed" in env.run("refresh-tokens").stdout
    assert len(token_calls(sandbox)) == 1

    sandbox.google.tokens.expire(access)
    env.run("schedule")
    env.run("consume", "--max-seconds", "60")
    (job,) = env.jobs(cid)
    assert job["status"] == "completed", job["error_message"]
    used = bearers(sandbox.google)
    assert used and set(used) == {new}
    assert len(token_calls(sandbox)) == 1  # consume did not need to refresh again


def test_token_already_expired_at_consume_time_is_refreshed_before_the_job(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    sandbox.google.tokens.expire(access)
    cid = env.seed("org-1", "google", CID, access, refresh, expires_at=in_seconds(-600))

    env.run("schedule")
    env.run("consume", "--max-seconds", "60")

    (job,) = env.jobs(cid)
    assert job["status"] == "completed", job["error_message"]
    assert len(token_calls(sandbox)) == 1
    new = env.token(cid)
    assert new != access and sandbox.google.tokens.check(new) == "ok"
    used = bearers(sandbox.google)
    assert used and set(used) == {new}  # the expired token was never sent
    conn = env.connection(cid)
    assert near(conn["expires_at"], datetime.now(UTC) + timedelta(seconds=GOOGLE_TTL))
    assert conn["sync_status"] == "completed" and conn["needs_reauth"] == 0


class JumpAfterSecondDataCall:
    """The sandbox's clock: real time until the second Google Ads data request arrives,
    then two hours later, so a token valid at the start of a job expires in the middle."""

    def __init__(self):
        self.app = None

    def __call__(self) -> float:
        calls = len(self.app.requests_to("googleAds")) if self.app is not None else 0
        return time.time() + (7200 if calls >= 2 else 0)


def test_token_expiring_mid_job_is_refreshed_once_and_the_job_completes(tmp_path):
    clock = JumpAfterSecondDataCall()
    with Sandbox(clock=clock) as sandbox:
        clock.app = sandbox.google
        env = RecordingEnv(
            home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path / 'wh.db'}", sandbox=sandbox
        )
        env.run("init")
        access, refresh = sandbox.google.tokens.issue(ttl=3600)
        cid = env.seed("org-1", "google", CID, access, refresh, expires_at=in_seconds(3600))
        env.run("schedule")
        env.run("consume", "--max-seconds", "60")

        (job,) = env.jobs(cid)
        assert job["status"] == "completed", job["error_message"]
        assert len(token_calls(sandbox)) == 1
        new = env.token(cid)
        used = bearers(sandbox.google)
        # The first call succeeded, the second was refused as expired, the rest used the new token.
        assert used[:2] == [access, access] and len(used) > 2 and set(used[2:]) == {new}
        assert env.connection(cid)["consecutive_auth_failures"] == 0
        assert_no_secrets(env.outputs + env.stored_texts())


def test_facebook_exchange_and_tiktok_stripe_skips(env, sandbox):
    fb_access, _ = sandbox.facebook.tokens.issue(ttl=120)
    fb = env.seed("org-1", "facebook", "1234567890", fb_access, expires_at=in_seconds(120))
    # A TikTok advertiser token does not expire; a refresh token stored with it is never used
    # (tt_user/oauth2/refresh_token belongs to TikTok account tokens, another product).
    tt_access, tt_refresh = sandbox.tiktok.tokens.issue(ttl=None)
    tt = env.seed("org-1", "tiktok", "7000000000000000001", tt_access, tt_refresh, expires_at=in_seconds(120))
    adv_access, _ = sandbox.tiktok.tokens.issue(ttl=None)
    adv = env.seed("org-1", "tiktok", "7000000000000000002", adv_access, expires_at=in_seconds(60))
    key, _ = sandbox.stripe.tokens.issue(ttl=None)
    st = env.seed("org-1", "stripe", "acct_1", key, expires_at=in_seconds(60))
    untouched = {c: env.connection(c)["credentials_encrypted"] for c in (tt, adv, st)}

    summary = refresh_json(env)
    assert summary == {"refreshed": 1, "skipped": 3, "failed": 0, "needs_reauth": 0, "failures": []}

    (exchange,) = sandbox.facebook.requests_to("oauth/access_token")
    assert (
        exchange.query["grant_type"] == "fb_exchange_token"
        and exchange.query["fb_exchange_token"] == fb_access
    )
    fb_new = env.token(fb)
    assert fb_new != fb_access and sandbox.facebook.tokens.check(fb_new) == "ok"
    assert near(env.connection(fb)["expires_at"], datetime.now(UTC) + timedelta(seconds=FACEBOOK_TTL))

    for c, ciphertext in untouched.items():
        assert env.connection(c)["credentials_encrypted"] == ciphertext
    assert env.token(tt, "refresh_token_encrypted") == tt_refresh
    assert sandbox.tiktok.requests == [] and sandbox.stripe.requests == []
    text = env.run("refresh-tokens").stdout  # the skipped ones stay due
    assert "0 refreshed, 3 skipped, 0 failed (0 need re-auth)" in text


def test_corrupted_refresh_token_fails_that_connection_and_the_run_goes_on(env, sandbox):
    ids = []
    for i, acct in enumerate(("111-111-1111", "222-222-2222", "333-333-3333")):
        access, refresh = sandbox.google.tokens.issue(ttl=3600)
        # Earliest expiry first: the broken ones are refreshed before the healthy one.
        ids.append(env.seed("org-1", "google", acct, access, refresh, expires_at=in_seconds(30 + 30 * i)))
    garbage, tampered, healthy = ids
    raw = bytearray(base64.b64decode(env.connection(tampered)["refresh_token_encrypted"]))
    raw[-1] ^= 0x01
    with env.store() as c:
        c.execute(
            "UPDATE platform_connections SET refresh_token_encrypted = ? WHERE id = ?",
            ("!!not base64 at all!!", garbage),
        )
        c.execute(
            "UPDATE platform_connections SET refresh_token_encrypted = ? WHERE id = ?",
            (base64.b64encode(bytes(raw)).decode(), tampered),
        )
    before = {c: env.connection(c) for c in ids}

    t0 = datetime.now(UTC)
    proc = env.run("refresh-tokens", "--json")
    assert proc.returncode == 0
    summary = json.loads(proc.stdout)
    assert (summary["refreshed"], summary["skipped"], summary["failed"], summary["needs_reauth"]) == (
        1,
        0,
        2,
        2,
    )
    assert {f["connection_id"] for f in summary["failures"]} == {garbage, tampered}
    assert all("refresh_token_encrypted" in f["reason"] for f in summary["failures"])

    for c in (garbage, tampered):
        row = env.connection(c)
        assert row["sync_status"] == "failed"
        assert row["sync_error"].startswith("Token refresh failed: ")
        assert "refresh_token_encrypted" in row["sync_error"]
        assert row["needs_reauth"] == 1 and row["reauth_reason"]
        assert near(row["reauth_detected_at"], t0)
        assert row["credentials_encrypted"] == before[c]["credentials_encrypted"]
    assert env.connection(healthy)["credentials_encrypted"] != before[healthy]["credentials_encrypted"]
    assert env.connection(healthy)["needs_reauth"] == 0
    assert len(token_calls(sandbox)) == 1

    status = env.run("status", garbage, check=False)
    assert "needs re-authorisation" in status.stdout and "reconnect" in status.stdout
    assert env.run("status", check=False).returncode == 1  # cron sees that something needs a person


def test_invalid_grant_stops_scheduling_until_the_connection_is_reconnected(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    sandbox.google.tokens.revoke(refresh)
    revoked = env.seed("org-1", "google", "111-111-1111", access, refresh, expires_at=in_seconds(60))
    ok_access, ok_refresh = sandbox.google.tokens.issue(ttl=3600)
    healthy = env.seed("org-1", "google", "222-222-2222", ok_access, ok_refresh, expires_at=in_seconds(90))

    summary = refresh_json(env)
    assert (summary["refreshed"], summary["failed"], summary["needs_reauth"]) == (1, 1, 1)
    row = env.connection(revoked)
    # A definitive answer flags re-auth at once, on the first failure.
    assert row["needs_reauth"] == 1 and row["consecutive_auth_failures"] == 1
    assert row["sync_status"] == "failed"
    assert row["sync_error"].startswith("Token refresh failed: ") and "revoked" in row["sync_error"]
    assert row["reauth_reason"] and row["reauth_detected_at"]

    sched = env.run_json("schedule")
    assert sched["enqueued"] == 1
    assert env.jobs(revoked) == [] and len(env.jobs(healthy)) == 1
    calls = len(token_calls(sandbox))
    env.run("refresh-tokens", "--margin", "7200")  # a flagged connection is not retried either
    assert len(token_calls(sandbox)) == calls + 1  # only the healthy one

    access2, refresh2 = sandbox.google.tokens.issue(ttl=3600)
    env.add("org-1", "google", "111-111-1111", access2, refresh2)  # the installed command
    row = env.connection(revoked)
    assert (row["needs_reauth"], row["reauth_reason"], row["reauth_detected_at"]) == (0, None, None)
    assert (row["sync_status"], row["sync_error"], row["consecutive_auth_failures"]) == ("pending", None, 0)
    assert env.run_json("schedule")["enqueued"] == 1
    assert len(env.jobs(revoked)) == 1


def test_ambiguous_401s_flag_reauth_only_after_three_in_a_row(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = env.seed("org-1", "google", CID, access, refresh, expires_at=in_seconds(3600))

    def sync(failing: bool) -> None:
        if failing:
            # The first call and the retry after the on-demand refresh are both refused.
            fault = sandbox.google.faults.add(
                "status", path="googleAds", times=2, status=401, body=UNAUTHENTICATED
            )
        calls = len(token_calls(sandbox))
        proc = env.run("sync", cid, "--now", "--wait", check=False)
        assert proc.returncode == (1 if failing else 0), proc.stdout + proc.stderr
        if failing:
            assert fault.times == 0 and len(token_calls(sandbox)) == calls + 1

    def state() -> tuple:
        row = env.connection(cid)
        return row["consecutive_auth_failures"], row["needs_reauth"], row["sync_status"]

    sync(failing=True)
    assert state() == (1, 0, "failed")
    assert env.connection(cid)["sync_error"].startswith("Authentication failed: ")
    sync(failing=True)
    assert state() == (2, 0, "failed")
    sync(failing=False)
    assert state() == (0, 0, "completed")  # a successful sync resets the count
    for expected in ((1, 0, "failed"), (2, 0, "failed"), (3, 1, "failed")):
        sync(failing=True)
        assert state() == expected
    row = env.connection(cid)
    assert row["reauth_reason"] and row["reauth_detected_at"]
    assert "re-authoris" in env.jobs(cid)[-1]["error_message"]


def test_token_endpoint_5xx_leaves_the_connection_as_it_was_and_next_run_retries(env, sandbox):
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    cid = env.seed("org-1", "google", CID, access, refresh, expires_at=in_seconds(60))
    before = dict(env.connection(cid))
    sandbox.google.faults.add(
        "status",
        path=r"^/token$",
        times=-1,
        status=503,
        body={"error": "backend_error", "error_description": "Backend Error"},
    )

    summary = refresh_json(env)
    assert (summary["refreshed"], summary["failed"], summary["needs_reauth"]) == (0, 1, 0)
    assert dict(env.connection(cid)) == before
    assert len(token_calls(sandbox)) == 3  # the HTTP layer's short retries, then give up

    sandbox.google.faults.clear()
    summary = refresh_json(env)
    assert (summary["refreshed"], summary["failed"]) == (1, 0)
    assert env.token(cid) != access


def test_missing_app_credentials_is_one_message_per_run(env, sandbox):
    google = []
    for acct in ("111-111-1111", "222-222-2222", "333-333-3333"):
        access, refresh = sandbox.google.tokens.issue(ttl=3600)
        google.append(env.seed("org-1", "google", acct, access, refresh, expires_at=in_seconds(60)))
    fb_access, _ = sandbox.facebook.tokens.issue(ttl=3600)
    fb = env.seed("org-1", "facebook", "1234567890", fb_access, expires_at=in_seconds(60))
    before = {c: dict(env.connection(c)) for c in google}

    proc = env.run("refresh-tokens", "--json", GOOGLE_CLIENT_SECRET="")
    assert proc.returncode == 0
    summary = json.loads(proc.stdout)
    assert (summary["refreshed"], summary["failed"], summary["needs_reauth"]) == (1, 3, 0)
    assert proc.stderr.count("GOOGLE_CLIENT_SECRET") == 1, proc.stderr
    assert "3 connection(s) not refreshed" in proc.stderr
    assert token_calls(sandbox) == []
    assert {c: dict(env.connection(c)) for c in google} == before
    assert env.token(fb) != fb_access  # the other platform was still refreshed


def test_wrong_encryption_key_refuses_the_run_instead_of_flagging_everyone(tmp_path):
    """A wrong key fails every row's authentication; that is a configuration error, and no
    connection may be flagged for re-authorisation because of it."""
    import base64
    import os

    from clearlift_cli.sandbox import Sandbox

    with Sandbox() as sb:
        env = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/wh.db", sandbox=sb)
        env.run("init")
        ids = []
        for acct in ("1111111111", "2222222222"):
            access, refresh = sb.google.tokens.issue(ttl=60)
            ids.append(
                env.add("org-1", "google", acct, access, refresh, expires_at="2000-01-01T00:00:00.000Z")
            )
        other_key = base64.b64encode(os.urandom(32)).decode()
        proc = env.run("refresh-tokens", check=False, ENCRYPTION_KEY=other_key)
        assert proc.returncode == 3
        assert "ENCRYPTION_KEY decrypts none" in proc.stderr
        for cid in ids:
            row = env.connection(cid)
            assert row["needs_reauth"] == 0 and row["sync_status"] == "pending"
        assert sb.google.requests_to("/token") == []
