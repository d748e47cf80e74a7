"""`clearlift demo`, the command in-process: offline on a fresh machine (nothing but HOME),
and behind a corporate proxy (its loopback traffic stays direct). The demo that syncs
nothing: tests/integration/test_demo.py."""

from __future__ import annotations

import json
import os
import socket

from tests.helpers import invoke

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(stdout: str) -> dict[str, int]:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("rows: ")]
    return {name: int(n) for name, n in (part.rsplit(" ", 1) for part in line[6:].split(", "))}


def test_demo_behind_a_proxy_keeps_its_loopback_traffic_direct_and_syncs(tmp_path):
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLEARLIFT_", "GOOGLE_", "FACEBOOK_", "TIKTOK_", "ENCRYPTION_"))
        and k.lower() not in ("no_proxy",)
    }
    clean["HOME"] = str(tmp_path)
    dead_proxy = f"http://127.0.0.1:{_closed_port()}"  # nothing listens: any proxied request fails
    clean.update({name: dead_proxy for name in PROXY_VARS})
    proc = invoke(["demo", "--home", str(tmp_path / "demo")], clean)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    assert all(
        rows[t] > 0
        for t in (
            "google_ads_daily_metrics",
            "facebook_ads_daily_metrics",
            "tiktok_ads_daily_metrics",
            "stripe_charges",
        )
    ), rows


def test_demo_runs_offline_on_a_fresh_machine(tmp_path):
    home = tmp_path / "demo"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLEARLIFT_", "GOOGLE_", "FACEBOOK_", "TIKTOK_", "ENCRYPTION_"))
    }
    clean["HOME"] = str(tmp_path)
    proc = invoke(["demo", "--home", str(home)], clean)
    assert proc.returncode == 0, proc.stderr
    assert "stripe_daily_revenue" in proc.stdout
    assert "API versions: Google Ads v26, Meta Marketing v27.0" in proc.stdout
    # The manager connection synced both its client accounts, each under its own id.
    per_client = dict(
        pair.split()
        for pair in proc.stdout.split("daily rows per client account ")[1].splitlines()[0].split(", ")
    )
    assert set(per_client) == {"3010000001", "3010000002"} and all(int(n) > 0 for n in per_client.values())
    status = invoke(["status", "--json"], {**clean, "CLEARLIFT_HOME": str(home)})
    rows = json.loads(status.stdout)
    assert status.returncode == 1  # the demo's revoked connection is failing, by design
    by_platform = {}
    for r in rows:
        by_platform.setdefault(r["connection"]["platform"], []).append(r["latest_sync"]["status"])
    assert set(by_platform) == {"google", "facebook", "tiktok", "stripe"}
    assert sorted(by_platform["google"]) == ["completed", "completed", "completed", "failed"]
    assert all(s == ["completed"] for p, s in by_platform.items() if p != "google")
