"""`clearlift sandbox serve` as a process of its own, serving until SIGTERM: the exports it
prints point at working sandboxes (a Google token that works, a D1 URL and token a client
can query); and `python -m clearlift_cli` runs the command."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

from clearlift_cli.d1 import D1Client
from clearlift_cli.settings import resolve
from clearlift_cli.timeutil import FrozenClock
from tests.harness import CLEARLIFT


def test_sandbox_serve_prints_the_d1_url_and_a_working_token():
    clock = FrozenClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    serve = subprocess.Popen(
        [CLEARLIFT, "sandbox", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("# Ctrl-C"):
            lines.append(serve.stdout.readline().rstrip("\n"))
            assert len(lines) < 50, lines
        url = next(line.split("=", 1)[1] for line in lines if line.startswith("export CLEARLIFT_D1_URL="))
        store, token = next(line.split()[2:4] for line in lines if line.startswith("# d1:"))
        settings = resolve(
            flags={"d1_url": url}, environ={"CLOUDFLARE_API_TOKEN": token.split("=", 1)[1]}, read_config=False
        )
        client = D1Client.from_settings(settings, store, clock=clock)
        assert client.query("SELECT 40 + 2 AS answer") == [{"answer": 42}]
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    assert serve.returncode == 0


def test_python_dash_m_and_sandbox_serve(tmp_path):
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "clearlift_cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "schedule" in proc.stdout
    serve = subprocess.Popen(
        [CLEARLIFT, "sandbox", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("# Ctrl-C"):
            lines.append(serve.stdout.readline().rstrip("\n"))
            assert len(lines) < 50, lines
        env = dict(line[len("export ") :].split("=", 1) for line in lines if line.startswith("export "))
        google_access = next(line.split()[2] for line in lines if line.startswith("# google:"))
        import requests

        url = f"{env['CLEARLIFT_GOOGLE_ADS_URL']}/v26/customers/1234567890/googleAds:searchStream"
        ok = requests.post(
            url,
            json={"query": "SELECT customer.id FROM customer"},
            timeout=10,
            headers={
                "Authorization": f"Bearer {google_access}",
                "developer-token": env["GOOGLE_ADS_DEVELOPER_TOKEN"],
            },
        )
        assert ok.status_code == 200 and ok.json()[0]["results"][0]["customer"]["id"] == "1234567890"
        bad = requests.post(
            url,
            json={"query": "SELECT customer.id FROM customer"},
            timeout=10,
            headers={"Authorization": "Bearer nope", "developer-token": env["GOOGLE_ADS_DEVELOPER_TOKEN"]},
        )
        assert bad.status_code == 401
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    assert serve.returncode == 0
