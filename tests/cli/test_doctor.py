"""`clearlift doctor`: a healthy host passes; a wrong key, an unreachable warehouse, a sunset
API version, missing app credentials and a cron that stopped each fail with what to do.

The command runs in-process, configured by environment only, against real
SQLite / PostgreSQL stores and the sandbox platforms; the "cron stopped" and "ending soon"
cases call the same core function with a frozen clock (the only thing mocked)."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from clearlift_cli import commands
from clearlift_cli.settings import resolve
from clearlift_cli.store import SCHEMA_VERSION
from clearlift_cli.timeutil import FrozenClock
from tests.harness import Env

UTC = UTC


# `env` (conftest) with the embedded SQLite warehouse.
pytestmark = pytest.mark.sqlite_warehouse


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def doctor_json(env: Env, **more: str) -> tuple[int, dict]:
    proc = env.run("doctor", "--json", check=False, **more)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def run_cron_once(env: Env) -> list[str]:
    """Two healthy Google connections and one Facebook (five stored tokens), then one run
    of each cron command."""
    ids = []
    for acct in ("1111111111", "2222222222"):
        access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
        ids.append(env.add("org-1", "google", acct, access, refresh))
    fb_access, _ = env.sandbox.facebook.tokens.issue(ttl=5_000_000)
    ids.append(
        env.add(
            "org-2",
            "facebook",
            "act_1000000001",
            fb_access,
            expires_at=(datetime.now(UTC) + timedelta(days=50)).isoformat(),
        )
    )
    env.run("refresh-tokens")
    env.run("schedule")
    env.run("consume")
    return ids


def settings_of(env: Env, **more: str):
    return resolve({}, environ=env.environ(**more), read_config=False)


def test_a_healthy_host_passes_every_check(env):
    run_cron_once(env)
    proc = env.run("doctor")  # exit 0
    code, report = doctor_json(env)
    assert code == 0 and report["ok"] is True
    by_name = checks(report)
    assert {c["status"] for c in report["checks"]} == {"ok"}, [
        c for c in report["checks"] if c["status"] != "ok"
    ]
    for name in (
        "store",
        "encryption_key",
        "warehouse",
        "app_credentials.google",
        "app_credentials.facebook",
        "api_version.google",
        "api_version.facebook",
        "api_version.tiktok",
        "queue.dead_letters",
        "queue.oldest_ready",
        "queue.expired_leases",
        "connections",
        "cron.schedule",
        "cron.consume",
        "cron.refresh-tokens",
        "disk.home",
    ):
        assert name in by_name, name
    assert "decrypts 5 of 5 sampled stored tokens" in by_name["encryption_key"]["message"]
    assert f"schema version {SCHEMA_VERSION}, writable" in by_name["store"]["message"]
    # one line per check, each with its status first, then a summary line
    lines = proc.stdout.splitlines()
    check_lines = [ln for ln in lines if ln.split(" ", 1)[0] in ("ok", "warn", "fail")]
    assert len(check_lines) == len(report["checks"])
    assert lines[-1] == f"doctor: 0 failed, 0 warning(s), {len(report['checks'])} ok"


def test_settings_show_their_source_and_never_a_secret(env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('google_ads_login_customer_id = "1234567890"\n')
    proc = env.run(
        "doctor",
        "--json",
        "--warehouse-url",
        f"sqlite:///{tmp_path}/other.db",
        check=False,
        CLEARLIFT_CONFIG=str(config),
    )
    report = json.loads(proc.stdout)
    src = {s["name"]: (s["value"], s["source"]) for s in report["settings"]}
    assert src["CLEARLIFT_WAREHOUSE_URL"] == (f"sqlite:///{tmp_path}/other.db", "flag")
    assert src["CLEARLIFT_HOME"] == (str(env.home), "env")
    assert src["GOOGLE_ADS_LOGIN_CUSTOMER_ID"] == ("1234567890", "config file")
    assert src["CLEARLIFT_HTTP_TIMEOUT"] == ("5.0", "env")
    assert src["CLEARLIFT_STRIPE_URL"][1] == "env"
    assert src["CLEARLIFT_FACEBOOK_API_VERSION"][1] == "default"
    assert src["ENCRYPTION_KEY"] == ("set", "env")
    assert src["TIKTOK_CLIENT_SECRET"] == ("set", "env")
    assert src["ENCRYPTION_KEY_FILE"] == ("not set", "-")
    for secret in (env.key, env.environ()["GOOGLE_CLIENT_SECRET"], env.environ()["FACEBOOK_APP_SECRET"]):
        assert secret not in proc.stdout and secret not in env.run("doctor", check=False).stdout


def test_a_wrong_key_fails_and_counts_the_tokens_it_cannot_decrypt(env):
    run_cron_once(env)
    wrong = base64.b64encode(os.urandom(32)).decode()
    code, report = doctor_json(env, ENCRYPTION_KEY=wrong)
    key = checks(report)["encryption_key"]
    assert code == 1 and report["ok"] is False
    assert key["status"] == "fail"
    assert "decrypts 0 of 5 sampled stored tokens" in key["message"]
    assert "ENCRYPTION_KEY" in key["fix"]
    text = env.run("doctor", check=False, ENCRYPTION_KEY=wrong).stdout
    assert wrong not in text and env.key not in text
    assert [ln for ln in text.splitlines() if ln.startswith("fail  encryption_key")]
    # a malformed key is a failure too, before any token is tried
    code, report = doctor_json(env, ENCRYPTION_KEY="not base64!")
    assert code == 1 and "not valid base64" in checks(report)["encryption_key"]["message"]


def test_one_token_written_with_another_key_is_a_warning_naming_it(env):
    ids = run_cron_once(env)
    with env.store() as c:
        other = base64.b64encode(os.urandom(12 + 20)).decode()  # well-formed, wrong tag
        c.execute("UPDATE platform_connections SET credentials_encrypted = ? WHERE id = ?", (other, ids[0]))
    code, report = doctor_json(env)
    key = checks(report)["encryption_key"]
    assert code == 0 and key["status"] == "warn"
    assert "decrypts 4 of 5 sampled stored tokens (1 fail authentication, 0 malformed)" in key["message"]
    assert ids[0] in key["message"]


def test_an_unreachable_warehouse_fails_without_showing_its_password(env):
    url = "postgresql://clearlift:s3cretpw@127.0.0.1:1/warehouse"
    code, report = doctor_json(env, CLEARLIFT_WAREHOUSE_URL=url)
    wh = checks(report)["warehouse"]
    assert code == 1 and wh["status"] == "fail" and "cannot be reached" in wh["message"]
    assert "CLEARLIFT_WAREHOUSE_URL" in wh["fix"]
    assert "s3cretpw" not in json.dumps(report)
    # the other checks still ran
    assert checks(report)["store"]["status"] == "ok" and "cron.consume" in checks(report)
    # an embedded warehouse that was never created is named, not created by doctor
    missing = env.home / "missing" / "wh.db"
    code, report = doctor_json(env, CLEARLIFT_WAREHOUSE_URL=f"sqlite:///{missing}")
    assert (
        checks(report)["warehouse"]["status"] == "fail"
        and "does not exist" in checks(report)["warehouse"]["message"]
    )
    assert not missing.exists()


def test_a_sunset_api_version_fails_and_one_ending_soon_warns(env):
    run_cron_once(env)
    code, report = doctor_json(env, CLEARLIFT_GOOGLE_ADS_API_VERSION="v22")
    google = checks(report)["api_version.google"]
    assert code == 1 and google["status"] == "fail"
    assert "v22 is no longer served (sunset 2026-10-07)" in google["message"]
    assert google["fix"] == "set CLEARLIFT_GOOGLE_ADS_API_VERSION"
    # A platform without connections only warns: nothing would fail today.
    code, report = doctor_json(
        env, CLEARLIFT_FACEBOOK_API_VERSION="v24.0", CLEARLIFT_GOOGLE_ADS_API_VERSION="v26"
    )
    assert checks(report)["api_version.facebook"]["status"] == "fail"  # a facebook connection exists
    env.run("connections", "pause", "org-2-facebook-act_1000000001")
    code, report = doctor_json(env, CLEARLIFT_FACEBOOK_API_VERSION="v24.0")
    assert code == 0 and checks(report)["api_version.facebook"]["status"] == "warn"
    # Ending within 45 days: a warning with the date, on a frozen clock.
    clock = FrozenClock(datetime(2027, 10, 1, 12, tzinfo=UTC))
    report = commands.doctor(settings_of(env), clock=clock)
    by_name = {c.name: c for c in report.checks}
    assert by_name["api_version.google"].status == "warn"
    assert "v26 is sunset on 2027-11-01 (31 days)" in by_name["api_version.google"].message


def test_missing_app_credentials_fail_only_for_platforms_in_use(env):
    run_cron_once(env)
    code, report = doctor_json(env, GOOGLE_ADS_DEVELOPER_TOKEN="", FACEBOOK_APP_SECRET="", TIKTOK_APP_ID="")
    by_name = checks(report)
    assert code == 1
    assert by_name["app_credentials.google"]["status"] == "fail"
    assert by_name["app_credentials.google"]["fix"] == "set GOOGLE_ADS_DEVELOPER_TOKEN"
    # the Facebook token expires: renewing it needs the app secret
    assert by_name["app_credentials.facebook"]["status"] == "fail"
    assert "FACEBOOK_APP_SECRET" in by_name["app_credentials.facebook"]["message"]
    assert "app_credentials.tiktok" not in by_name  # no TikTok connection


def test_a_cron_that_stopped_fails_and_a_late_one_warns(env):
    run_cron_once(env)
    s = settings_of(env)
    now = datetime.now(UTC)
    fresh = {c.name: c for c in commands.doctor(s, clock=FrozenClock(now + timedelta(minutes=2))).checks}
    assert all(fresh[f"cron.{n}"].status == "ok" for n in ("schedule", "consume", "refresh-tokens"))
    # 20 minutes without a run: consume (every minute, runs up to 600 s) and refresh-tokens
    # (every 5 minutes) are late; schedule (every 15) too.
    late = {c.name: c for c in commands.doctor(s, clock=FrozenClock(now + timedelta(minutes=20))).checks}
    assert late["cron.consume"].status == "warn" and late["cron.schedule"].status == "warn"
    assert late["cron.refresh-tokens"].status == "fail"
    assert "last successful run finished 20m ago" in late["cron.consume"].message
    stopped = commands.doctor(s, clock=FrozenClock(now + timedelta(hours=2)))
    by_name = {c.name: c for c in stopped.checks}
    assert not stopped.ok
    for name in ("schedule", "consume", "refresh-tokens"):
        check = by_name[f"cron.{name}"]
        assert check.status == "fail", check
        assert f"`clearlift {name}`" in check.fix and "crontab.example" in check.fix
    # a manual `sync --now --wait` is not the cron consume: it does not clear the failure
    access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
    cid = env.add("org-3", "google", "3333333333", access, refresh)
    env.run("sync", cid, "--now", "--wait")
    again = {c.name: c for c in commands.doctor(s, clock=FrozenClock(now + timedelta(hours=2))).checks}
    assert again["cron.consume"].status == "fail"


def test_a_failing_run_is_named_and_never_run_commands_warn(env):
    code, report = doctor_json(env)
    assert code == 0  # a new store: cron has not run yet, which is only a warning
    for name in ("schedule", "consume", "refresh-tokens"):
        assert checks(report)[f"cron.{name}"]["status"] == "warn"
        assert "no " + name + " run recorded" in checks(report)[f"cron.{name}"]["message"]
    run_cron_once(env)
    # a run refused before it did anything (here: another key) leaves no trace in the store
    wrong = base64.b64encode(os.urandom(32)).decode()
    for acct in ("4444444444", "5555555555"):
        access, refresh = env.sandbox.google.tokens.issue(ttl=3600)
        env.add("org-4", "google", acct, access, refresh)
    env.run("schedule")
    assert env.run("consume", check=False, ENCRYPTION_KEY=wrong).returncode == 3
    assert checks(doctor_json(env)[1])["cron.consume"]["status"] == "ok"
    # a run that failed on its way is named, with its (redacted) error
    from clearlift_cli import runs
    from clearlift_cli.store import open_store

    store = open_store(str(env.db))
    try:
        runs.record(
            store,
            "consume",
            started_at=store.clock.time(),
            ok=False,
            summary=runs.failed_summary(RuntimeError("boom: GET /v27.0/me?access_token=EAAB-secret-42")),
        )
    finally:
        store.close()
    code, report = doctor_json(env)
    consume = checks(report)["cron.consume"]
    assert code == 0 and consume["status"] == "warn"
    assert "the latest run" in consume["message"] and "failed: RuntimeError: boom" in consume["message"]
    assert "EAAB-secret-42" not in json.dumps(report)


def test_queue_and_connection_problems_are_warnings(env):
    ids = run_cron_once(env)
    with env.store() as c:
        c.execute(
            "UPDATE platform_connections SET needs_reauth = 1, sync_status = 'failed' WHERE id = ?", (ids[0],)
        )
        c.execute("UPDATE platform_connections SET sync_status = 'failed' WHERE id = ?", (ids[1],))
        c.execute("UPDATE sync_queue SET state = 'dead' WHERE connection_id = ?", (ids[0],))
        c.execute(
            "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, visible_at, "
            "attempts, created_at, updated_at) VALUES ('j-old', ?, 'facebook', '{}', 1, 'ready', ?, 0, "
            "'2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')",
            (ids[2], datetime.now(UTC).timestamp() - 7200),
        )
        c.execute(
            "INSERT INTO sync_queue (job_id, connection_id, platform, body, priority, state, visible_at, "
            "attempts, created_at, updated_at) VALUES ('j-lost', 'org-9-google-9', 'google', '{}', 0, "
            "'leased', ?, 1, '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')",
            (datetime.now(UTC).timestamp() - 600,),
        )
    code, report = doctor_json(env)
    by_name = checks(report)
    assert by_name["connections"]["status"] == "warn"
    assert by_name["connections"]["message"] == "3 active: 1 failing, 1 need re-auth"
    assert (
        by_name["queue.dead_letters"]["status"] == "warn"
        and "1 dead letter" in by_name["queue.dead_letters"]["message"]
    )
    assert (
        by_name["queue.oldest_ready"]["status"] == "fail"
        and "waiting 2h" in by_name["queue.oldest_ready"]["message"]
    )
    assert by_name["queue.expired_leases"]["status"] == "warn"
    assert code == 1


def test_a_missing_or_old_store_fails_and_the_rest_still_runs(env, tmp_path):
    code, report = doctor_json(env, CLEARLIFT_DB=str(tmp_path / "nowhere.db"))
    by_name = checks(report)
    assert (
        code == 1 and by_name["store"]["status"] == "fail" and "clearlift init" in by_name["store"]["message"]
    )
    assert by_name["warehouse"]["status"] == "ok" and "api_version.google" in by_name
    assert "cron.consume" not in by_name  # needs the store
    with env.store() as c:
        c.execute(
            "UPDATE clearlift_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),)
        )
    code, report = doctor_json(env)
    assert code == 1 and checks(report)["store"]["status"] == "fail"
    assert checks(report)["store"]["fix"].startswith("run `clearlift init`")


@pytest.mark.postgres
def test_doctor_on_a_postgresql_control_plane(pg_control_env, sandbox):
    env = pg_control_env
    access, refresh = sandbox.google.tokens.issue(ttl=3600)
    env.add("org-1", "google", "1111111111", access, refresh)
    env.run("refresh-tokens")
    env.run("schedule")
    env.run("consume")
    code, report = doctor_json(env)
    by_name = checks(report)
    assert code == 0, report
    assert f"(postgres): schema version {SCHEMA_VERSION}, writable" in by_name["store"]["message"]
    assert by_name["cron.consume"]["status"] == "ok" and by_name["cron.schedule"]["status"] == "ok"
    assert "disk.store" not in by_name  # nothing of the store lives on this host
    assert by_name["encryption_key"]["message"].endswith("decrypts 2 of 2 sampled stored tokens")
