"""Secrets (issue 9, scenario 14): with every log level and format, across succeeding and
failing flows on all four platforms (platforms that echo tokens and app secrets back in
their errors), no access token, refresh token, app secret or encryption key reaches
stdout, stderr, a stored error, the status output or the store file's bytes.

Each command is the installed one, a process of its own: what is scanned is everything the
real process wrote, and what it masks it masks with only the secrets that process itself
learnt (the redaction registry is per process). The URL and key-file cases are in
tests/cli/test_secrets.py, the SQL scan in tests/unit/test_sql_scan.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clearlift_cli import commands
from clearlift_cli.sandbox import APP_CREDENTIALS, Sandbox
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import iso_z
from tests.harness import Env, add_connection, make_visible, queue_row, store_bytes, store_text

UTC = UTC
APP_SECRETS = [
    APP_CREDENTIALS[k]
    for k in (
        "GOOGLE_CLIENT_SECRET",
        "GOOGLE_ADS_DEVELOPER_TOKEN",
        "FACEBOOK_APP_SECRET",
        "TIKTOK_CLIENT_SECRET",
    )
]
# Every token a sandbox issues has one of these shapes (Stripe: secret keys).
TOKEN_SHAPE = re.compile(
    r"(?:google|facebook|tiktok|stripe)-(?:at|rt)-[A-Za-z0-9_-]{8,}|sk_(?:test|live)_[0-9a-f]{8,}"
)
FACEBOOK_APP_SECRET = APP_CREDENTIALS["FACEBOOK_APP_SECRET"]
LEVELS = {"quiet": ("-q",), "default": (), "verbose": ("-v",), "debug": ("-vv",)}


def echo(*secrets: str) -> str:
    """An error message that repeats secrets back, as some platforms do."""
    return "request for token " + " / ".join(secrets) + " was refused"


class Flows:
    """Connections on all four platforms (for each: one that succeeds, one whose token
    refresh fails, one whose data request fails) and the platforms' echoing faults."""

    def __init__(self, env: Env, sandbox: Sandbox, flags: tuple[str, ...]):
        self.env, self.sb, self.flags = env, sandbox, flags
        self.procs: list = []
        self.issued: set[str] = set()
        self.ids: dict[str, str] = {}
        self.tokens: dict[str, tuple[str, str | None]] = {}
        self.settings = resolve(environ=env.environ(), read_config=False)

    def run(self, *args: str, check: bool = True, **more: str):
        proc = self.env.run(*self.flags, *args, check=check, **more)
        assert "Traceback" not in proc.stderr, proc.stderr
        self.procs.append(proc)
        return proc

    def add(self, name: str, platform: str, account: str, *, expires_in: float | None = None) -> None:
        app = self.sb.app(platform)
        if platform == "stripe":
            access, refresh = app.issue_key(account), None
        else:
            access, refresh = app.tokens.issue(ttl=None)
        self.issued |= {access, refresh} - {None}
        expires = iso_z(datetime.now(UTC) + timedelta(seconds=expires_in)) if expires_in else None
        cid, _ = commands.add_connection(
            self.settings,
            commands.NewConnection(
                organization_id=f"org-{name}",
                platform=platform,
                account_id=account,
                account_name=name,
                connected_by="user-1",
                access_token=access,
                refresh_token=refresh,
                expires_at=expires,
            ),
        )
        self.ids[name] = cid
        self.tokens[name] = (access, refresh)

    def setup(self) -> None:
        # Refreshes go in expiry order per platform: the "refresh-bad" one meets the fault.
        for platform, account in (
            ("google", "1000000001"),
            ("facebook", "2000000001"),
            ("tiktok", "7100000001"),
        ):
            self.add(f"{platform}-refresh-bad", platform, account, expires_in=30)
            self.add(f"{platform}-ok", platform, account[:-1] + "2", expires_in=90)
            self.add(f"{platform}-data-bad", platform, account[:-1] + "3")
        self.add("stripe-ok", "stripe", "acct_1Ok")
        g_access, g_refresh = self.tokens["google-refresh-bad"]
        self.sb.google.faults.add(
            "status",
            path=r"^/token$",
            times=1,
            status=400,
            body={
                "error": "invalid_grant",
                "error_description": echo(g_refresh, g_access, APP_CREDENTIALS["GOOGLE_CLIENT_SECRET"]),
            },
        )
        self.sb.facebook.faults.add(
            "status",
            path=r"oauth/access_token",
            times=1,
            status=400,
            body={
                "error": {
                    "message": echo(
                        self.tokens["facebook-refresh-bad"][0], APP_CREDENTIALS["FACEBOOK_APP_SECRET"]
                    ),
                    "type": "OAuthException",
                    "code": 190,
                }
            },
        )
        g_data = self.tokens["google-data-bad"][0]
        self.sb.google.faults.add(
            "status",
            path=r"customers/1000000003/",
            times=-1,
            status=400,
            body={
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "message": echo(
                        g_data,
                        APP_CREDENTIALS["GOOGLE_ADS_DEVELOPER_TOKEN"],
                        APP_CREDENTIALS["GOOGLE_CLIENT_SECRET"],
                    ),
                }
            },
        )
        self.sb.facebook.faults.add(
            "status",
            path=r"act_2000000003",
            times=-1,
            status=400,
            body={
                "error": {
                    "message": echo(
                        self.tokens["facebook-data-bad"][0], APP_CREDENTIALS["FACEBOOK_APP_SECRET"]
                    ),
                    "type": "OAuthException",
                    "code": 100,
                }
            },
        )

    def fail_next_sync(self, name: str) -> None:
        """`sync CONN --now --wait` whose first data request echoes the secrets and fails."""
        access, refresh = self.tokens[name]
        platform = name.split("-")[0]
        if platform == "tiktok":
            self.sb.tiktok.fail_next(
                40002,
                times=1,
                path="advertiser/info",
                message=echo(access, refresh or "", APP_CREDENTIALS["TIKTOK_CLIENT_SECRET"]),
            )
        else:
            self.sb.stripe.fail_next(400, times=1, message=echo(access))
        proc = self.run("sync", self.ids[name], "--now", "--wait", check=False)
        assert proc.returncode == 1, proc.stderr

    def secrets(self) -> set[str]:
        """Every secret in play: tokens issued to the connections, tokens the sandboxes
        handed out or received since (refreshes, exchanges), app secrets, the key."""
        seen = set(self.issued)
        for app in (self.sb.google, self.sb.facebook, self.sb.tiktok, self.sb.stripe):
            for r in app.requests:
                auth = r.headers.get("authorization", "")
                seen.add(auth.split(" ", 1)[1] if " " in auth else "")
                seen.add(r.headers.get("access-token", ""))
                seen |= {r.query.get(k, "") for k in ("access_token", "fb_exchange_token", "client_secret")}
                fields = r.json() if r.body.startswith(b"{") else r.form() if r.body else {}
                seen |= {str(fields.get(k, "")) for k in ("refresh_token", "client_secret")}
        return {s for s in seen if len(s) >= 8} | set(APP_SECRETS) | {self.env.key}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("level", list(LEVELS))
def test_no_secret_reaches_output_logs_stored_errors_status_or_the_store_file(tmp_path, sandbox, level, fmt):
    env = Env(home=tmp_path / "home", warehouse_url=f"sqlite:///{tmp_path}/warehouse.db", sandbox=sandbox)
    flows = Flows(env, sandbox, (*LEVELS[level], "--log-format", fmt))
    commands.init(flows.settings)  # (its output names paths only)
    flows.setup()
    stripe_key = sandbox.stripe.issue_key("acct_1DataBad")
    flows.issued.add(stripe_key)
    flows.run(
        "connections",
        "add",
        "--org",
        "org-stripe-data-bad",
        "--platform",
        "stripe",
        "--account-id",
        "acct_1DataBad",
        "--connected-by",
        "user-1",
        CLEARLIFT_ACCESS_TOKEN=stripe_key,
    )
    flows.ids["stripe-data-bad"] = "org-stripe-data-bad-stripe-acct_1DataBad"
    flows.tokens["stripe-data-bad"] = (stripe_key, None)
    # A reader holds the store open, so its -wal and -shm files stay to be looked at (SQLite
    # gives them the store file's mode, whichever process creates them).
    holder = sqlite3.connect(env.db)
    try:
        holder.execute("SELECT count(*) FROM sync_queue").fetchone()

        refreshed = json.loads(flows.run("refresh-tokens", "--json").stdout)
        # TikTok advertiser tokens are never refreshed (skipped): two platforms refresh.
        assert (refreshed["refreshed"], refreshed["failed"], refreshed["needs_reauth"]) == (2, 2, 2)
        flows.run("schedule")
        flows.run("consume")
        flows.fail_next_sync("tiktok-data-bad")  # its scheduled job completed; this one fails
        flows.fail_next_sync("stripe-data-bad")
        flows.run("status", check=False)
        status = json.loads(flows.run("status", "--json", check=False).stdout)
        flows.run("status", flows.ids["google-refresh-bad"])
        dead = json.loads(flows.run("queue", "dead", "--json").stdout)

        for side in ("", "-wal", "-shm"):
            path = Path(f"{env.db}{side}")
            assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600, side
        raw = store_bytes(env)  # the file and its write-ahead log, not yet checkpointed
    finally:
        holder.close()

    # The flows really ran: successes, failures with the echoed secrets masked in place.
    latest = {s["connection_id"]: s["latest_sync"] for s in status}
    for name in ("google-ok", "facebook-ok", "tiktok-ok", "stripe-ok"):
        assert latest[flows.ids[name]]["status"] == "completed", (name, latest[flows.ids[name]])
    for name in ("google-data-bad", "facebook-data-bad", "tiktok-data-bad", "stripe-data-bad"):
        job = latest[flows.ids[name]]
        assert job["status"] == "failed" and "***" in job["error"], (name, job)
    with contextlib.closing(sqlite3.connect(env.db)) as c:
        reasons = dict(c.execute("SELECT id, reauth_reason FROM platform_connections WHERE needs_reauth = 1"))
    assert set(reasons) == {flows.ids[f"{p}-refresh-bad"] for p in ("google", "facebook")}
    assert reasons[flows.ids["google-refresh-bad"]] == "request for token *** / *** / *** was refused"
    assert all("***" in f["reason"] for f in refreshed["failures"] if "google" in f["connection_id"])
    assert len(dead) == 4

    secrets = flows.secrets()
    assert len(secrets) > len(flows.issued) + len(APP_SECRETS)  # refreshed tokens are in there too
    texts = {f"clearlift {' '.join(p.args[1:])}": p.stdout + p.stderr for p in flows.procs}
    texts["store rows"] = store_text(env)
    leaks = [(where, s[:14]) for where, text in texts.items() for s in secrets if s in text]
    leaks += [(where, m[:14]) for where, text in texts.items() for m in TOKEN_SHAPE.findall(text)]
    assert leaks == []
    assert [s[:14] for s in secrets if s.encode() in raw] == []
    assert TOKEN_SHAPE.search(raw.decode("latin-1")) is None
    if level == "debug":
        logged = "\n".join(p.stderr for p in flows.procs)
        assert "DEBUG" in logged or '"level": "debug"' in logged  # the most talkative logs were checked


# --- Meta: tokens exchanged by refresh-tokens and by the consumer, echoed back in errors ----------


def test_no_token_or_app_secret_reaches_output_logs_or_the_store(env, sandbox):
    fb = sandbox.facebook
    flags = ("-v", "-v", "--log-format", "json")
    procs = []

    def run(*args: str, check: bool = True):
        proc = env.run(*flags, *args, check=check)
        procs.append(proc)
        return proc

    def add(account: str, token: str, **kw) -> str:
        conn, proc = add_connection(env, "org-1", "facebook", account, token, flags=flags, **kw)
        procs.append(proc)
        return conn

    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    exchanged, _ = fb.tokens.issue(ttl=None)  # refreshed (exchanged) by refresh-tokens
    unknown = "EAAGsandbox" + os.urandom(16).hex()  # Graph echoes a token it cannot parse
    revoked, _ = fb.tokens.issue(ttl=None)  # its exchange fails
    fb.tokens.revoke(revoked)
    echoed, _ = fb.tokens.issue(ttl=None)  # a 500 whose message repeats the token and app secret
    c_exchanged = add("2000000001", exchanged, expires_at=soon)
    c_unknown = add("2000000002", unknown)
    c_revoked = add("2000000003", revoked, expires_at=soon)
    c_echoed = add("2000000004", echoed)

    summary = json.loads(run("refresh-tokens", "--json").stdout)
    assert (summary["refreshed"], summary["needs_reauth"]) == (1, 1)

    in_job, _ = fb.tokens.issue(ttl=None)  # exchanged by the consumer just before its job
    c_in_job = add("2000000005", in_job, expires_at=soon)
    fb.faults.add(
        "status",
        path=r"act_2000000004/insights",
        times=-1,
        status=500,
        body={
            "error": {
                "message": f"Internal error for {echoed} (app secret {FACEBOOK_APP_SECRET}); "
                f"request was ?access_token={echoed}&appsecret={FACEBOOK_APP_SECRET}",
                "type": "OAuthException",
                "code": 2,
                "is_transient": True,
            }
        },
    )
    # The in-job exchange's account is rate limited once: that job is deferred, then completes.
    fb.faults.add(
        "status",
        path=r"act_2000000005$",
        times=1,
        status=400,
        headers={
            "x-business-use-case-usage": json.dumps(
                {
                    "2000000005": [
                        {
                            "type": "ads_insights",
                            "call_count": 100,
                            "total_cputime": 9,
                            "total_time": 9,
                            "estimated_time_to_regain_access": 5,
                        }
                    ]
                }
            )
        },
        body={
            "error": {
                "message": "User request limit reached",
                "type": "OAuthException",
                "code": 17,
                "is_transient": True,
            }
        },
    )
    run("schedule")
    run("consume", "--max-seconds", "60")
    assert "Rate limited" in env.jobs(c_in_job)[-1]["error_message"]
    assert "Internal error for ***" in queue_row(env, env.jobs(c_echoed)[-1]["id"])["last_error"]
    # The deferred job runs again; the echoing job's next delivery is its last one (dead letter).
    with env.store() as c:
        c.execute("UPDATE sync_queue SET attempts = max_attempts - 1 WHERE connection_id = ?", (c_echoed,))
    make_visible(env)
    run("consume", "--max-seconds", "60")

    statuses = {
        c: env.jobs(c)[-1]["status"] if env.jobs(c) else None
        for c in (c_exchanged, c_unknown, c_revoked, c_echoed, c_in_job)
    }
    assert statuses == {
        c_exchanged: "completed",
        c_unknown: "failed",
        c_revoked: None,
        c_echoed: "failed",
        c_in_job: "completed",
    }
    assert env.connection(c_revoked)["needs_reauth"] == 1
    run("status", "--json", check=False)
    run("status", check=False)
    run("status", c_unknown)
    run("status", c_echoed, "--json")
    run("status", c_revoked)
    dead = json.loads(run("queue", "dead", "--json").stdout)
    run("queue", "dead")
    assert {d["connection_id"] for d in dead} == {c_unknown, c_echoed}

    # Every token Graph ever saw (including the ones the exchanges handed out) and the app secret.
    seen = {r.query.get(k) for r in fb.requests for k in ("access_token", "fb_exchange_token")}
    secrets = {exchanged, unknown, revoked, echoed, in_job, FACEBOOK_APP_SECRET, *(s for s in seen if s)}
    assert len(secrets) == 8  # five tokens, two exchanged for new ones, the app secret
    texts = {f"clearlift {' '.join(p.args[1:])}": p.stdout + p.stderr for p in procs}
    texts["store"] = store_text(env)
    texts["warehouse"] = repr(
        [env.warehouse_rows(t) for t in ("facebook_ads_campaigns", "facebook_ads_daily_metrics")]
    )
    leaks = [(where, s[:12]) for where, text in texts.items() for s in secrets if s in text]
    assert leaks == []
    raw = store_bytes(env)
    assert [s[:12] for s in secrets if s.encode() in raw] == []

    # The flows really ran, with debug logs on and the secrets' places visibly masked.
    logs = [json.loads(line) for p in procs for line in p.stderr.splitlines() if line.startswith("{")]
    assert any(entry["level"] == "debug" and "access_token=***" in entry["message"] for entry in logs)
    assert "Malformed access token ***" in env.jobs(c_unknown)[-1]["error_message"]
    echoed_error = env.jobs(c_echoed)[-1]["error_message"]
    assert "Internal error for ***" in echoed_error and "app secret ***" in echoed_error
    assert "re-authorised" in texts["store"]
