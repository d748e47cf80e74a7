"""`clearlift demo` on a machine behind a corporate proxy, and a demo that syncs nothing."""

from __future__ import annotations

import io
import os
import socket
import subprocess

import pytest
from rich.console import Console

from clearlift_cli.demo import run_demo
from clearlift_cli.errors import ClearliftError
from clearlift_cli.sandbox import Sandbox
from tests.harness import CLEARLIFT

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
    proc = subprocess.run(
        [CLEARLIFT, "demo", "--home", str(tmp_path / "demo")],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
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


def test_a_demo_that_synced_nothing_fails(tmp_path):
    sb = Sandbox()
    for platform in ("google", "facebook", "tiktok", "stripe"):
        sb.app(platform).faults.add("reset", times=-1)  # every request: connection reset
    out = io.StringIO()
    with pytest.raises(ClearliftError) as info:
        run_demo(str(tmp_path / "demo"), Console(file=out, width=240), sandbox=sb)
    assert "the demo synced nothing" in str(info.value) and "connection failed" in str(info.value)
    assert "clearlift status" in info.value.hint
    assert "rows: " in out.getvalue()  # what it did is still shown
