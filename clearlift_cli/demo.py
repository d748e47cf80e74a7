"""`clearlift demo`: the whole pipeline on this machine, no accounts, no network.

Starts the sandbox platforms on loopback, creates an embedded store and warehouse (in a
temporary directory, or ``--home DIR`` laid out as CLEARLIFT_HOME), connects a few
accounts across all platforms (one whose token expires in two minutes, one whose token
was revoked, one Google manager account with two client accounts), then runs
refresh-tokens -> schedule -> consume and shows the result, with the current API versions.
With ``d1=True`` (``clearlift demo --d1``) ClearLift's tables live in a sandbox D1 (Cloudflare's
REST API over a SQLite file, on loopback) and clearlift's own in ``control.db``: the whole
demo runs through the live-D1 store, and the D1 requests it made are shown.
A demo that synced nothing raises ``ClearliftError`` (exit 1): it must never look like a
success.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from clearlift_cli import commands
from clearlift_cli import settings as settings_mod
from clearlift_cli.errors import ClearliftError
from clearlift_cli.platforms import registry
from clearlift_cli.sandbox import Sandbox
from clearlift_cli.timeutil import SYSTEM_CLOCK, iso_z

if TYPE_CHECKING:
    from clearlift_cli.sandbox.d1 import D1App

DEMO_CONNECTIONS = [
    # (org, platform, account id, name, token ttl seconds or None, revoked)
    ("org-acme", "google", "123-456-7890", "Acme Search", 3600, False),
    ("org-acme", "google", "222-333-4444", "Acme Brand (expiring token)", 120, False),
    ("org-acme", "facebook", "act_1029384756", "Acme Meta", 5_000_000, False),
    ("org-globex", "tiktok", "7012345678901234567", "Globex TikTok", None, False),
    ("org-globex", "stripe", "acct_1Globex", "Globex Stripe", None, False),
    ("org-initech", "google", "555-666-7777", "Initech (revoked token)", 3600, True),
    ("org-umbrella", "google", "999-888-7777", "Umbrella agency (manager, 2 clients)", 3600, False),
]

# The manager connection above syncs these client accounts, each in its own currency and
# time zone, as the API worker records a manager's chosen clients.
DEMO_MANAGER = "999-888-7777"
DEMO_MANAGER_CLIENTS = [("301-000-0001", "EUR", "Europe/Paris"), ("301-000-0002", "GBP", "Europe/London")]


@contextmanager
def _d1_sandbox(home_dir: Path) -> Iterator[tuple[D1App, dict[str, str]]]:
    """A sandbox D1 holding ClearLift's tables (in ``home_dir/d1.sqlite``), served on
    loopback for the demo's duration, and the settings that point clearlift at it."""
    from clearlift_cli.sandbox.d1 import D1App
    from clearlift_cli.sandbox.server import SandboxServer

    app = D1App(home_dir / "d1.sqlite")
    app.create_clearlift_tables()
    server = SandboxServer(app).start()
    try:
        yield app, {"CLEARLIFT_DB": app.store_url, **app.env(server)}
    finally:
        server.stop()
        app.close()


def run_demo(home: str | None, console, *, sandbox: Sandbox | None = None, d1: bool = False) -> dict:
    """Run the demo; ``sandbox`` is an unstarted ``Sandbox`` to use instead of a fresh one;
    ``d1``: ClearLift's tables in a sandbox D1 reached over its REST API."""
    started = time.monotonic()
    home_dir = Path(home).expanduser() if home else Path(tempfile.mkdtemp(prefix="clearlift-demo-"))
    home_dir.mkdir(parents=True, exist_ok=True)
    no_d1: tuple[D1App | None, dict[str, str]] = (None, {})
    with _d1_sandbox(home_dir) if d1 else nullcontext(no_d1) as (d1_app, d1_env):
        out = _run(home_dir, console, sandbox, d1_env)
    if d1_app is not None:
        console.print(
            f"D1: {len(d1_app.requests)} requests to the sandbox D1; ClearLift's tables are in "
            f"{d1_app.path} (sqlite3 can read it), clearlift's own in {home_dir / 'control.db'}"
        )
    console.print(
        f"done in {time.monotonic() - started:.1f}s."
        + (f" Inspect: CLEARLIFT_HOME={home_dir} clearlift status" if not d1 else "")
        + ("" if home else "   (temporary directory; use --home DIR to keep it somewhere you choose)")
    )
    if out["consume"]["records"] == 0:
        raise ClearliftError(
            "the demo synced nothing"
            + (f" (first error: {out['first_error']})" if out["first_error"] else ""),
            hint=f"CLEARLIFT_HOME={home_dir} clearlift status shows every job's error",
        )
    out.pop("first_error")
    return out


def _run(home_dir: Path, console, sandbox: Sandbox | None, more_env: dict[str, str]) -> dict:
    key = base64.b64encode(os.urandom(32)).decode()
    with sandbox or Sandbox() as sb:
        env = {**sb.env(), **more_env}
        flags = {"home": str(home_dir), "encryption_key": key}
        s = settings_mod.resolve(flags, environ=env, read_config=False)
        _announce(console, home_dir, sb, s)
        commands.init(s)
        _connect_accounts(s, sb)
        result = _sync(s, console)
        _show_status(s, console)
        totals = _show_warehouse(s, console)
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    errors = sorted({o.error for o in result.outcomes if o.error})
    return {
        "home": str(home_dir),
        "totals": totals,
        "consume": result.summary(),
        "first_error": errors[0] if errors else None,
    }


def _announce(console, home_dir: Path, sb: Sandbox, s: settings_mod.Settings) -> None:
    """The home, the sandbox platforms' addresses and the API versions in use."""
    from clearlift_cli.platforms import versions

    console.print(
        f"[b]clearlift demo[/b] — home {home_dir}\n"
        f"sandbox platforms on loopback: {', '.join(f'{p} {srv.base_url}' for p, srv in sb.servers.items())}"
    )
    console.print(
        "API versions: "
        + ", ".join(
            f"{versions.label(p).removesuffix(' API')} {v}"
            for p, v in versions.configured_versions(s).items()
        )
    )


def _connect_accounts(s: settings_mod.Settings, sb: Sandbox) -> None:
    """The sandbox accounts of ``DEMO_CONNECTIONS`` (the manager's clients too), each
    connected as the API worker stores it."""
    sb.google.configure_account(DEMO_MANAGER, manager=True, name="Umbrella agency")
    for client, currency, tz in DEMO_MANAGER_CLIENTS:
        sb.google.configure_account(
            client, manager_id=DEMO_MANAGER.replace("-", ""), currency=currency, time_zone=tz, campaigns=3
        )
    for org, platform, account, name, ttl, revoked in DEMO_CONNECTIONS:
        # what the API worker stores: TikTok's advertiser tokens and Stripe's keys come
        # without a refresh token and never expire (their ttl is None)
        access, refresh = sb.app(platform).authorize(account, ttl)
        if revoked:
            for token in (access, refresh):
                if token:
                    sb.app(platform).tokens.revoke(token)
        expires = None
        if ttl is not None:
            expires = iso_z(SYSTEM_CLOCK.now().replace(microsecond=0) + timedelta(seconds=ttl))
        commands.add_connection(
            s,
            commands.NewConnection(
                organization_id=org,
                platform=platform,
                account_id=account,
                account_name=name,
                connected_by=f"user-{org}",
                access_token=access,
                refresh_token=refresh,
                expires_at=expires,
                settings_json=_MANAGER_SELECTION if account == DEMO_MANAGER else None,
            ),
        )


# The manager connection's settings: the client accounts its user chose.
_MANAGER_SELECTION = json.dumps(
    {"accountSelection": {"mode": "selected", "selectedAccounts": [c for c, _, _ in DEMO_MANAGER_CLIENTS]}}
)


def _sync(s: settings_mod.Settings, console):
    """refresh-tokens -> schedule -> consume, each with its one-line summary."""
    refreshed = commands.refresh_tokens(s)
    console.print(
        f"refresh-tokens: {refreshed.summary()['refreshed']} refreshed, "
        f"{refreshed.summary()['skipped']} skipped, {refreshed.summary()['failed']} failed"
    )
    sched = commands.schedule(s)
    console.print(f"schedule: {sched.summary()['enqueued']} jobs enqueued")
    # The revoked connection is not flagged until its job fails; it gets one then.
    result = commands.consume(s, concurrency=8, max_seconds=120)
    console.print(f"consume: {result.summary()}")
    return result


def _show_status(s: settings_mod.Settings, console) -> None:
    from clearlift_cli import render
    from clearlift_cli import status as st

    store = commands.store_for(s)
    console.print(render.status_table(st.all_reports(store)))
    store.close()


_SAMPLE_COLUMNS = [
    "account_id",
    "campaign_id",
    "metric_date",
    "impressions",
    "clicks",
    "spend_micros",
    "conversions",
    "conversion_value_micros",
    "currency",
]


def _show_warehouse(s: settings_mod.Settings, console) -> dict[str, int]:
    """A few Google rows, the manager's rows per client account; returns every table's row count."""
    from rich.table import Table

    from clearlift_cli.warehouse import open_warehouse

    wh = open_warehouse(s.warehouse_url)
    t = Table(title="a few warehouse rows: google_ads_daily_metrics")
    for col in _SAMPLE_COLUMNS:
        t.add_column(col)
    for row in wh.fetch_rows("google_ads_daily_metrics", limit=5):
        t.add_row(*(str(row[c]) for c in _SAMPLE_COLUMNS))
    console.print(t)
    manager_rows = {
        client.replace("-", ""): len(
            wh.fetch_rows(
                "google_ads_daily_metrics",
                organization_id="org-umbrella",
                account_id=client.replace("-", ""),
            )
        )
        for client, _, _ in DEMO_MANAGER_CLIENTS
    }
    console.print(
        f"Google manager {DEMO_MANAGER}: daily rows per client account "
        + ", ".join(f"{c} {n}" for c, n in manager_rows.items())
    )
    totals = {table: wh.count_rows(table) for p in registry.platforms() for table in p.tables}
    wh.close()
    return totals
