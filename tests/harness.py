"""A clearlift host for tests (``Env``): its own home, store, key and warehouse, pointed at
the sandboxes on loopback, configured by environment variables only, as cron runs it.
``env.run(...)`` runs a command in this process (tests/cli/ and below) or as the installed
command (tests/e2e/). Plus small helpers to read what a run left in the store with plain
sqlite3."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import ClassVar

from clearlift_cli import commands
from clearlift_cli.crypto import FieldCipher
from clearlift_cli.settings import resolve
from tests.helpers import invoke, one_line_error, store_snapshot

CLEARLIFT = shutil.which("clearlift", path=str(Path(sys.executable).parent)) or "clearlift"


@dataclass
class Env:
    home: Path
    warehouse_url: str
    sandbox: object
    key: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    extra: dict = field(default_factory=dict)
    # True: run() starts the installed command; False: runs it in this process; None: the
    # layer's default, INSTALLED (False; tests/e2e/conftest.py makes it True there).
    installed: bool | None = None
    INSTALLED: ClassVar[bool] = False

    @property
    def db(self) -> Path:
        return self.home / "clearlift.db"

    def environ(self, **more: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLEARLIFT_", "GOOGLE_", "FACEBOOK_", "TIKTOK_", "ENCRYPTION_"))
        }
        env.update(self.sandbox.env())
        env.update(
            {
                "CLEARLIFT_HOME": str(self.home),
                "CLEARLIFT_WAREHOUSE_URL": self.warehouse_url,
                "ENCRYPTION_KEY": self.key,
                "CLEARLIFT_HTTP_TIMEOUT": "5",
            }
        )
        env.update(self.extra)
        env.update(more)
        return env

    def run(
        self, *args: str, check: bool = True, stdin: str | None = None, **env: str
    ) -> subprocess.CompletedProcess:
        """``clearlift ARGS`` with this host's environment (plus ``env``): in this process
        (``invoke``), or as the installed command when ``installed`` (every ``Env`` in
        tests/e2e/, see its conftest)."""
        if self.is_installed():
            proc = subprocess.run(
                [CLEARLIFT, *args],
                env=self.environ(**env),
                capture_output=True,
                text=True,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                timeout=240,
            )
        else:
            proc = invoke(args, self.environ(**env), stdin_text=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"clearlift {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def is_installed(self) -> bool:
        return Env.INSTALLED if self.installed is None else self.installed

    def run_json(self, *args: str, **env: str):
        return json.loads(self.run(*args, "--json", **env).stdout)

    def add(
        self,
        org: str,
        platform: str,
        account: str,
        access: str,
        refresh: str | None = None,
        expires_at: str | None = None,
        settings: str | None = None,
        user: str = "user-1",
    ) -> str:
        cid, _ = add_connection(
            self,
            org,
            platform,
            account,
            access,
            refresh=refresh,
            expires_at=expires_at,
            settings=settings,
            user=user,
        )
        return cid

    def seed(
        self,
        org: str,
        platform: str,
        account: str,
        access: str,
        refresh: str | None = None,
        expires_at: str | None = None,
    ) -> str:
        """Add a connection in-process with what `connections add` calls (quicker setup)."""
        settings = resolve(environ=self.environ(), read_config=False)
        cid, _ = commands.add_connection(
            settings,
            commands.NewConnection(
                organization_id=org,
                platform=platform,
                account_id=account,
                account_name=None,
                connected_by="user-1",
                access_token=access,
                refresh_token=refresh,
                expires_at=expires_at,
            ),
        )
        return cid

    def store(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.db)
        c.row_factory = sqlite3.Row
        return c

    def job(self, job_id: str) -> sqlite3.Row:
        with self.store() as c:
            return c.execute("SELECT * FROM sync_jobs WHERE id = ?", (job_id,)).fetchone()

    def jobs(self, connection_id: str) -> list[sqlite3.Row]:
        with self.store() as c:
            return c.execute(
                "SELECT * FROM sync_jobs WHERE connection_id = ? ORDER BY created_at", (connection_id,)
            ).fetchall()

    def connection(self, connection_id: str) -> sqlite3.Row:
        with self.store() as c:
            return c.execute("SELECT * FROM platform_connections WHERE id = ?", (connection_id,)).fetchone()

    def window_days(self, job_id: str) -> tuple[date, date]:
        meta = json.loads(self.job(job_id)["metadata"])
        start = datetime.fromisoformat(meta["sync_window"]["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(meta["sync_window"]["end"].replace("Z", "+00:00"))
        from datetime import timedelta

        return start.date(), (end - timedelta(microseconds=1)).date()

    def warehouse_rows(self, table: str, **where) -> list[dict]:
        from clearlift_cli.warehouse import open_warehouse

        with open_warehouse(self.warehouse_url) as wh:
            return wh.fetch_rows(table, **where)


@dataclass
class RecordingEnv(Env):
    """An Env that keeps every command's output, to prove no secret ever shows (conftest's
    ``recording_env`` checks it and the stored texts at the end of the test)."""

    outputs: list[str] = field(default_factory=list)

    def run(self, *args, check=True, stdin=None, **env):
        proc = super().run(*args, check=False, stdin=stdin, **env)
        self.outputs.append(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"clearlift {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    @property
    def cipher(self) -> FieldCipher:
        return FieldCipher(base64.b64decode(self.key))

    def token(self, connection_id: str, column: str = "credentials_encrypted") -> str:
        return self.cipher.decrypt(self.connection(connection_id)[column])

    def stored_texts(self) -> list[str]:
        with self.store() as c:
            rows = c.execute("SELECT sync_error, reauth_reason FROM platform_connections").fetchall()
            rows += c.execute("SELECT error_message, metadata FROM sync_jobs").fetchall()
            rows += c.execute("SELECT last_error, body FROM sync_queue").fetchall()
        return [v for r in rows for v in r if v]


def refused(env: Env, *args: str, code: int, says: str, **more: str) -> str:
    """Run a command that must be refused: one error line saying ``says``, exit ``code``,
    the store's rows unchanged. Returns the error line."""
    before = store_snapshot(env.db)
    proc = env.run(*args, check=False, **more)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr)
    line = one_line_error(proc.stderr)
    assert says in line, line
    assert store_snapshot(env.db) == before, args
    return line


# --- helpers for the Facebook, TikTok and Stripe end-to-end tests ----------------------------


def add_connection(
    env: Env,
    org: str,
    platform: str,
    account: str,
    access: str,
    *,
    refresh: str | None = None,
    expires_at: str | None = None,
    settings: str | None = None,
    user: str = "user-1",
    flags: tuple[str, ...] = (),
) -> tuple[str, subprocess.CompletedProcess]:
    """`connections add` with global ``flags`` (e.g. ``-v -v``); the id and the process."""
    args = [
        *flags,
        "connections",
        "add",
        "--org",
        org,
        "--platform",
        platform,
        "--account-id",
        account,
        "--connected-by",
        user,
        "--account-name",
        f"{platform} {account}",
    ]
    if expires_at:
        args += ["--expires-at", expires_at]
    if settings:
        args += ["--settings", settings]
    env_vars = {"CLEARLIFT_ACCESS_TOKEN": access}
    if refresh:
        env_vars["CLEARLIFT_REFRESH_TOKEN"] = refresh
    proc = env.run(*args, **env_vars)
    return f"{org}-{platform}-{account}", proc


def consume_json(env: Env, *args: str, **more: str) -> dict:
    """`consume --json`'s summary; the run may not have met a lock or a traceback."""
    proc = env.run("consume", "--json", *args, **more)
    assert "Traceback" not in proc.stderr and "locked" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def queue_row(env: Env, job_id: str) -> sqlite3.Row:
    with env.store() as c:
        return c.execute("SELECT * FROM sync_queue WHERE job_id = ?", (job_id,)).fetchone()


def coverage(env: Env, job_id: str) -> list[tuple[str, str, int]]:
    """The job's committed slices as (start_date, end_date, records), in date order."""
    with env.store() as c:
        return [
            tuple(r)
            for r in c.execute(
                "SELECT start_date, end_date, records FROM clearlift_coverage WHERE job_id = ? ORDER BY start_date",
                (job_id,),
            )
        ]


def make_visible(env: Env, *, clear_pauses: bool = False) -> None:
    """Skip queue delays (and rate-limit pauses) instead of waiting them out."""
    with env.store() as c:
        c.execute("UPDATE sync_queue SET visible_at = 0 WHERE state = 'ready'")
        if clear_pauses:
            c.execute("DELETE FROM clearlift_platform_pauses")


def store_text(env: Env) -> str:
    """Every value of every table of the store, as one string (to search for secrets)."""
    with env.store() as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(tuple(row)) for t in tables for row in c.execute(f'SELECT * FROM "{t}"'))


def store_bytes(env: Env) -> bytes:
    """The raw bytes of the store file and its write-ahead log."""
    out = b""
    for suffix in ("", "-wal", "-journal"):
        path = Path(str(env.db) + suffix)
        if path.exists():
            out += path.read_bytes()
    return out


def without_synced_at(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "last_synced_at"} for r in rows]


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def seed(env: Env, platform: str, account: str, org: str = "org-1") -> str:
    """Add a connection with a fresh never-expiring sandbox token, as `connections add`
    does (in-process: quicker when a test needs many)."""
    app = env.sandbox.app(platform)
    access, refresh = (app.issue_key(account), None) if platform == "stripe" else app.tokens.issue(ttl=None)
    return env.seed(org, platform, account, access, refresh)


def popen(env: Env, *args: str, **more: str) -> subprocess.Popen:
    return subprocess.Popen(
        [CLEARLIFT, *args],
        env=env.environ(**more),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the live D1 as the store (conftest's live_d1, d1env) -------------------------------------


def d1_rows(app, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    with app.connect() as c:
        c.row_factory = sqlite3.Row
        return c.execute(sql, params).fetchall()


def control_rows(env: Env, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    with sqlite3.connect(env.home / "control.db") as c:
        c.row_factory = sqlite3.Row
        return c.execute(sql, params).fetchall()


def add_with_token(env: Env, sandbox, platform: str, account: str, org: str = "org-1") -> str:
    """`connections add` with a fresh sandbox token (an hour's; TikTok's and Stripe's alone)."""
    if platform == "stripe":
        access, refresh = sandbox.stripe.issue_key(account), None
    else:
        access, refresh = sandbox.issue_token(platform, ttl=3600)
    if platform == "tiktok":
        refresh = None
    return env.seed(org, platform, account, access, refresh)
