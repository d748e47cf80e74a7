"""`clearlift demo`: the whole pipeline on this machine, no accounts, no network.

Starts the sandbox platforms on loopback, creates an embedded store and warehouse (in a
temporary directory, or ``--home DIR`` laid out as CLEARLIFT_HOME), connects a few
accounts across all platforms (one whose token expires in two minutes, one whose token
was revoked, one Google manager account with two client accounts), then runs
refresh-tokens -> schedule -> consume and shows the result, with the current API versions.
A demo that synced nothing raises ``ClearliftError`` (exit 1): it must never look like a
success.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from clearlift_cli import app as core
from clearlift_cli import settings as settings_mod
from clearlift_cli.errors import ClearliftError
from clearlift_cli.platforms import registry
from clearlift_cli.sandbox import Sandbox
from clearlift_cli.timeutil import SYSTEM_CLOCK, iso_z

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


def run_demo(home: str | None, console, *, sandbox: Sandbox | None = None) -> dict:
    """Run the demo; ``sandbox`` is an unstarted ``Sandbox`` to use instead of a fresh one."""
    from rich.table import Table

    started = time.monotonic()
    home_dir = Path(home).expanduser() if home else Path(tempfile.mkdtemp(prefix="clearlift-demo-"))
    home_dir.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(os.urandom(32)).decode()
    with sandbox or Sandbox() as sb:
        env = sb.env()
        flags = {"home": str(home_dir), "encryption_key": key}
        s = settings_mod.resolve(flags, environ=env, read_config=False)
        console.print(
            f"[b]clearlift demo[/b] — home {home_dir}\n"
            f"sandbox platforms on loopback: {', '.join(f'{p} {srv.base_url}' for p, srv in sb.servers.items())}"
        )
        from clearlift_cli.platforms import versions

        console.print(
            "API versions: "
            + ", ".join(
                f"{versions.label(p).removesuffix(' API')} {v}"
                for p, v in versions.configured_versions(s).items()
            )
        )
        core.init(s)
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
            selection = None
            if account == DEMO_MANAGER:
                selection = json.dumps(
                    {
                        "accountSelection": {
                            "mode": "selected",
                            "selectedAccounts": [c for c, _, _ in DEMO_MANAGER_CLIENTS],
                        }
                    }
                )
            cid, _ = core.add_connection(
                s,
                core.NewConnection(
                    organization_id=org,
                    platform=platform,
                    account_id=account,
                    account_name=name,
                    connected_by=f"user-{org}",
                    access_token=access,
                    refresh_token=refresh,
                    expires_at=expires,
                    settings_json=selection,
                ),
            )
        refreshed = core.refresh_tokens(s)
        console.print(
            f"refresh-tokens: {refreshed.summary()['refreshed']} refreshed, "
            f"{refreshed.summary()['skipped']} skipped, {refreshed.summary()['failed']} failed"
        )
        sched = core.schedule(s)
        console.print(f"schedule: {sched.summary()['enqueued']} jobs enqueued")
        # The revoked connection is not flagged until its job fails; it gets one then.
        result = core.consume(s, concurrency=8, max_seconds=120)
        console.print(f"consume: {result.summary()}")

        from clearlift_cli import render
        from clearlift_cli import status as st

        store = core.store_for(s)
        console.print(render.status_table(st.all_reports(store)))
        store.close()
        from clearlift_cli.warehouse import open_warehouse

        wh = open_warehouse(s.warehouse_url)
        t = Table(title="a few warehouse rows: google_ads_daily_metrics")
        cols = [
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
        for col in cols:
            t.add_column(col)
        for row in wh.fetch_rows("google_ads_daily_metrics", limit=5):
            t.add_row(*(str(row[c]) for c in cols))
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
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    console.print(
        f"done in {time.monotonic() - started:.1f}s. Inspect: CLEARLIFT_HOME={home_dir} clearlift status"
        + ("" if home else "   (temporary directory; use --home DIR to keep it somewhere you choose)")
    )
    if result.summary()["records"] == 0:
        errors = sorted({o.error for o in result.outcomes if o.error})
        raise ClearliftError(
            "the demo synced nothing" + (f" (first error: {errors[0]})" if errors else ""),
            hint=f"CLEARLIFT_HOME={home_dir} clearlift status shows every job's error",
        )
    return {"home": str(home_dir), "totals": totals, "consume": result.summary()}
