"""Helpers shared by the tests of every layer.

Everything here talks to real things: the ``clearlift`` command in this process
(``invoke``) or installed, as a subprocess the way cron runs it (``run_cli``); real SQLite
files; and plain ``sqlite3`` / ``psycopg`` for rows the API worker would write (so the
code under test is not also the code that sets up).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clearlift_cli.models import JobType, Priority, SyncJobMessage, SyncWindow
from clearlift_cli.sandbox import APP_CREDENTIALS
from clearlift_cli.store import Store, open_store
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import FrozenClock, iso_z

UTC = UTC

# The PostgreSQL server the tests use (a fresh schema per test: conftest's pg_schema_url).
PG_URL = os.environ.get("CLEARLIFT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

# The repository's root (this checkout).
REPO = Path(__file__).resolve().parent.parent

# The installed entry point next to the interpreter running the tests (the venv's bin).
CLEARLIFT = shutil.which("clearlift", path=str(Path(sys.executable).parent)) or str(
    Path(sys.executable).parent / "clearlift"
)

# One key per test process; subprocesses get it through the environment.
KEY_BYTES = os.urandom(32)
KEY_B64 = base64.b64encode(KEY_BYTES).decode("ascii")

# A fixed instant for frozen clocks (a weekday, mid-afternoon UTC).
T0 = datetime(2025, 10, 10, 20, 45, 30, tzinfo=UTC)


def frozen(at: datetime = T0) -> FrozenClock:
    return FrozenClock(at)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the installed command: its own CLEARLIFT_HOME and HOME
    under ``tmp_path``, the test key, a wide terminal so help text does not wrap, and
    nothing inherited that could point it at another store."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CLEARLIFT_HOME": str(tmp_path / "home"),
        "ENCRYPTION_KEY": KEY_B64,
        "COLUMNS": "250",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "NO_COLOR": "1",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run_cli(
    args: Iterable[str],
    env: Mapping[str, str],
    *,
    stdin_text: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run the installed ``clearlift`` with ``env`` only; stdin is /dev/null unless
    ``stdin_text`` is given (so nothing can block on a prompt)."""
    return subprocess.run(
        [CLEARLIFT, *args],
        env=dict(env),
        stdin=subprocess.DEVNULL if stdin_text is None else None,
        input=stdin_text,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# What a run of the command configures for itself and a real process would drop on exit.
_LOGGERS = ("clearlift", "urllib3", "requests")


def invoke(
    args: Iterable[str],
    env: Mapping[str, str],
    *,
    stdin_text: str | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``clearlift ARGS`` in this process, as ``run_cli`` runs the installed one: the
        entry point itself (``clearlift_cli.cli.main``: one ``error:`` line and the exit code of
        its class) under Click's ``CliRunner`` isolation, with exactly ``env`` as the
        environment, stdin empty unless ``stdin_text`` is given, neither stream a terminal, in
    ``cwd`` when given.
        Each run starts with what clearlift keeps per process as a fresh process has it (no
        secrets registered for redaction, no file warned about yet), so an earlier run cannot
        mask a leak or a warning; what a run sets for the process (environment, argv, its
        SIGTERM handler, the loggers it configures, that per-process state) is put back
        afterwards. ``timeout`` is accepted for ``run_cli``'s signature; a run that hangs is
        ended by pytest-timeout instead.

        Not for what only a real process shows (signals, what reaches the file descriptors,
        what gets imported, crashes): those tests run the installed command (tests/e2e/)."""
    import click.formatting
    from click.testing import CliRunner

    from clearlift_cli import cli, redact, settings

    args = [str(a) for a in args]
    saved_secrets, saved_warned = redact.known(), set(settings._warned)
    saved_environ, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_sigterm = signal.getsignal(signal.SIGTERM)
    saved_loggers = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in map(logging.getLogger, _LOGGERS)]
    code: int = 0
    try:
        _set_process_state(redact, settings, secrets=frozenset(), warned=set())
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["clearlift", *args]
        if cwd is not None:
            os.chdir(cwd)
        with CliRunner().isolation(input=stdin_text or "") as (out, err, _):
            click.formatting.FORCED_WIDTH = None  # help wraps at COLUMNS, as in a real process
            try:
                cli.main()
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = int(exc.code)
                else:  # sys.exit("message"): Python prints it and exits 1
                    sys.stderr.write(f"{exc.code}\n")
                    code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode("utf-8", "backslashreplace")
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        signal.signal(signal.SIGTERM, saved_sigterm)
        for logger, handlers, level, propagate in saved_loggers:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
        _set_process_state(redact, settings, secrets=saved_secrets, warned=saved_warned)
    return subprocess.CompletedProcess([CLEARLIFT, *args], code, stdout, stderr)


def _set_process_state(redact: Any, settings: Any, *, secrets: frozenset[str], warned: set[str]) -> None:
    """The secrets registered for redaction (redact.register) and the files already warned
    about (settings.warn_if_others_can_read): the product's per-process state."""
    redact.forget_all_but(secrets)
    with settings._warned_lock:
        settings._warned.clear()
        settings._warned.update(warned)


def home_db(tmp_path: Path) -> Path:
    """Where ``cli_env(tmp_path)`` puts the store by default."""
    return tmp_path / "home" / "clearlift.db"


def new_store(path: Path | str, *, clock: FrozenClock | None = None) -> Store:
    """Create (or upgrade) a store file at ``path`` and open it; the caller closes it."""
    store = open_store(str(path), clock=clock or frozen(), create=True)
    store.migrate()
    return store


class PgRow(tuple):
    """A row that reads like ``sqlite3.Row``: by position, by name, ``keys()``, ``tuple(row)``."""

    names: dict[str, int]

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _pg_rows(cursor):
    names = {col.name: i for i, col in enumerate(cursor.description or [])}

    def make(values) -> PgRow:
        row = PgRow(values)
        row.names = names
        return row

    return make


class _PgRaw:
    """A plain psycopg connection (autocommit) that reads like sqlite3's: ``?`` placeholders,
    rows by name or position, ``with`` and ``close``; so the same tests run against the
    PostgreSQL control plane without going through clearlift's own engine."""

    def __init__(self, url: str):
        import psycopg

        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)

    def execute(self, sql: str, params: Any = ()):
        if params:  # sqlite3's placeholders as psycopg's (a literal % doubled)
            sql = sql.replace("%", "%%").replace("?", "%s")
        cur = self._conn.cursor(row_factory=_pg_rows)
        cur.execute(sql, tuple(params) if params else None, prepare=False)
        return cur

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:  # autocommit: nothing to commit
        pass

    def close(self) -> None:
        self._conn.close()


def is_pg(path: Path | str) -> bool:
    return str(path).startswith(("postgresql://", "postgres://"))


def raw(path: Path | str):
    """A plain connection, as the API worker (or an operator) would use: sqlite3 for a
    store file, or PostgreSQL for a control-plane URL."""
    if is_pg(path):
        return _PgRaw(str(path))
    c = sqlite3.connect(str(path), timeout=30)
    c.row_factory = sqlite3.Row
    return c


def insert_connection(path: Path | str, **cols: Any) -> str:
    """Insert a platform_connections row the way the API worker writes one; returns its id."""
    return insert_connections(path, [cols])[0]


def insert_connections(path: Path | str, rows: list[dict[str, Any]]) -> list[str]:
    ids = []
    c = raw(path)
    try:
        with c:
            for cols in rows:
                org = cols.get("organization_id", "org-1")
                platform = cols.get("platform", "google")
                account = str(cols.get("account_id", uuid.uuid4().hex[:10]))
                row = {
                    "id": f"{org}-{platform}-{account}",
                    "organization_id": org,
                    "platform": platform,
                    "account_id": account,
                    "account_name": "Account " + account,
                    "connected_by": "user-1",
                    "connected_at": "2025-10-01T10:00:00.000Z",
                    "is_active": 1,
                    "settings": "{}",
                    "credentials_encrypted": "x",
                    **cols,
                }
                names = ", ".join(row)
                marks = ", ".join("?" * len(row))
                c.execute(f"INSERT INTO platform_connections ({names}) VALUES ({marks})", list(row.values()))
                ids.append(row["id"])
    finally:
        c.close()
    return ids


# The API worker's manual trigger (POST /v1/connectors/:id/sync), as it writes its row;
# its message goes to a Cloudflare queue clearlift never reads.
API_TRIGGER_SQL = (
    "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at, metadata) "
    "VALUES (?, ?, ?, 'pending', ?, ?, ?)"
)
API_METADATA = {"triggered_by": "user-7", "manual": True}


def insert_api_trigger(
    db, cid: str, created: datetime, *, job_id: str | None = None, job_type: str = "full", org: str = "org-1"
) -> str:
    """A pending sync_jobs row as the API worker's manual trigger writes it; its id."""
    job_id = job_id or str(uuid.uuid4())
    c = raw(db)
    try:
        with c:
            c.execute(API_TRIGGER_SQL, (job_id, org, cid, job_type, iso_z(created), json.dumps(API_METADATA)))
    finally:
        c.close()
    return job_id


def enqueue_message(
    store: Store,
    queue: Queue,
    *,
    connection_id: str | None = None,
    platform: str = "google",
    priority: Priority = Priority.NORMAL,
    job_type: JobType = JobType.INCREMENTAL,
    delay: float = 0.0,
) -> SyncJobMessage:
    """Write a pending sync_jobs row and its queue message in one store transaction."""
    now = store.clock.now()
    account = uuid.uuid4().hex[:8]
    cid = connection_id or f"org-1-{platform}-{account}"
    account_id = cid.rsplit("-", 1)[-1]
    window = SyncWindow(now.replace(hour=0, minute=0, second=0, microsecond=0), now)
    msg = SyncJobMessage(
        job_id=str(uuid.uuid4()),
        connection_id=cid,
        organization_id="org-1",
        platform=platform,
        account_id=account_id,
        job_type=job_type,
        sync_window=window,
        retry_count=0,
        created_at=iso_z(now),
        priority=priority,
    )
    with store.write() as c:
        c.execute(
            "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at, metadata) "
            "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            (
                msg.job_id,
                msg.organization_id,
                cid,
                job_type.value,
                msg.created_at,
                json.dumps({"sync_window": window.to_json()}),
            ),
        )
        queue.enqueue(c, msg, delay=delay)
    return msg


def queue_row(path: Path | str, job_id: str) -> sqlite3.Row:
    c = raw(path)
    try:
        row = c.execute("SELECT * FROM sync_queue WHERE job_id = ?", (job_id,)).fetchone()
    finally:
        c.close()
    assert row is not None, f"no queue row for job {job_id}"
    return row


def query(path: Path | str, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    c = raw(path)
    try:
        return c.execute(sql, params).fetchall()
    finally:
        c.close()


def store_snapshot(db: Path | str) -> dict[str, list[tuple]]:
    """Every row of every table of the store (to prove nothing changed)."""
    c = sqlite3.connect(db)
    try:
        tables = [
            r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: sorted(map(tuple, c.execute(f'SELECT * FROM "{t}"')), key=repr) for t in tables}
    finally:
        c.close()


def jobs_by_connection(db) -> dict[str, list]:
    """Every sync_jobs row by connection id, oldest first."""
    out: dict[str, list] = {}
    for r in query(db, "SELECT * FROM sync_jobs ORDER BY created_at, id"):
        out.setdefault(r["connection_id"], []).append(r)
    return out


def message_for(db, job_id) -> tuple[dict, object]:
    """A job's queue message: its parsed body and its sync_queue row."""
    row = query(db, "SELECT * FROM sync_queue WHERE job_id = ?", (job_id,))[0]
    return json.loads(row["body"]), row


# Connection rows the API worker could write that `schedule` cannot plan (each is skipped
# with its reason, the rest scheduled); insert them with insert_connections.
BROKEN_CONNECTIONS = [
    {"account_id": "b1", "platform": "myspace", "last_synced_at": None},
    {"account_id": "b2", "settings": "{not json", "last_synced_at": None},
    {"account_id": "b3", "settings": "[1, 2]", "last_synced_at": None},
    {"account_id": "b4", "last_synced_at": "yesterday"},
    {
        "account_id": "b5",
        "settings": '{"sync_interval_minutes": -5}',
        "last_synced_at": "2025-10-01 00:00:00",
    },
    {"account_id": "b6", "settings": '{"lookback_days": "three"}', "last_synced_at": "2025-10-01 00:00:00"},
    # issue 16: each of these once overflowed date arithmetic and crashed the whole run
    {
        "account_id": "b7",
        "settings": '{"sync_interval_minutes": 1e10}',
        "last_synced_at": "2025-10-01 00:00:00",
    },
    {
        "account_id": "b8",
        "settings": '{"sync_interval_minutes": Infinity}',
        "last_synced_at": "2025-10-01 00:00:00",
    },
    {"account_id": "b9", "settings": '{"lookback_days": 10000000}', "last_synced_at": "2025-10-01 00:00:00"},
    {
        "account_id": "b10",
        "settings": '{"attribution_window_days": 100000000}',
        "last_synced_at": "2025-10-01 00:00:00",
    },
    {
        "account_id": "b11",
        "settings": '{"sync_interval_minutes": 30}',
        "last_synced_at": "9999-12-31T23:59:00.000Z",
    },
    {"account_id": "b12", "last_synced_at": "0001-01-01T00:00:00.000Z"},
    {
        "account_id": "b13",
        "settings": '{"sync_interval_minutes": "30"}',
        "last_synced_at": "2025-10-01 00:00:00",
    },
]


def fill_status_connections(db, n: int = 120) -> dict[str, list[str]]:
    """``n`` connections over four platforms: every 10th failed, every 25th needing
    re-auth, every 30th paused (a paused one never counts as failing); one job each."""
    rows, kinds = [], {"failed": [], "reauth": [], "paused": [], "ok": []}
    for i in range(n):
        platform = ("google", "facebook", "tiktok", "stripe")[i % 4]
        row = {
            "organization_id": f"org-{i:03d}",
            "platform": platform,
            "account_id": f"{1000 + i}",
            "sync_status": "completed",
            "last_synced_at": "2025-10-10T19:00:00.000Z",
        }
        kind = "ok"
        if i % 30 == 7:
            row.update(is_active=0, sync_status="failed")
            kind = "paused"
        elif i % 25 == 3:
            row.update(needs_reauth=1, sync_status="failed", reauth_reason="invalid_grant")
            kind = "reauth"
        elif i % 10 == 5:
            row.update(sync_status="failed", sync_error="HTTP 500")
            kind = "failed"
        rows.append(row)
        kinds[kind].append(f"org-{i:03d}-{platform}-{1000 + i}")
    insert_connections(db, rows)
    c = raw(db)
    with c:
        for r in rows:
            cid = f"{r['organization_id']}-{r['platform']}-{r['account_id']}"
            for k, created in enumerate(("2025-10-09T19:00:00.000Z", "2025-10-10T19:00:00.000Z")):
                c.execute(
                    "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at, "
                    "completed_at, records_synced, metadata) VALUES (?, ?, ?, ?, 'incremental', ?, ?, ?, ?)",
                    (
                        f"job-{cid}-{k}",
                        r["organization_id"],
                        cid,
                        "failed" if k and r["sync_status"] == "failed" else "completed",
                        created,
                        created,
                        10 + k,
                        json.dumps({"records_synced": 10 + k}),
                    ),
                )
    c.close()
    return kinds


def one_line_error(stderr: str) -> str:
    """The CLI's error contract: exactly one ``error: ...`` line (plus an optional hint),
    no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line, got: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    return errors[0]


# --- secrets ------------------------------------------------------------------------------

# The sandboxes' app credentials (the platforms' app secrets and Google's developer token).
SANDBOX_APP_SECRETS = [
    APP_CREDENTIALS[k]
    for k in (
        "GOOGLE_CLIENT_SECRET",
        "GOOGLE_ADS_DEVELOPER_TOKEN",
        "FACEBOOK_APP_SECRET",
        "TIKTOK_CLIENT_SECRET",
    )
]
# Every token the sandboxes issue has this shape (TokenAuthority and rotated refresh tokens).
SANDBOX_TOKEN_SHAPE = re.compile(r"(?:google|facebook|tiktok|stripe)-(?:at|rt)-[A-Za-z0-9_-]{8,}")


def assert_no_secrets(texts: list[str]) -> None:
    """No sandbox token and no app secret in any of ``texts``."""
    for text in texts:
        assert not SANDBOX_TOKEN_SHAPE.search(text), f"a token leaked: {text[:2000]}"
        for secret in SANDBOX_APP_SECRETS:
            assert secret not in text, f"an app secret leaked: {text[:2000]}"


def in_seconds(seconds: float) -> str:
    """The time ``seconds`` from now, as the store spells it."""
    return iso_z(datetime.now(UTC) + timedelta(seconds=seconds))


# --- the warehouse, read without clearlift ------------------------------------------------


def warehouse_query(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Look at a warehouse (``sqlite:///…`` or ``postgresql://…``) without clearlift's code in
    between; ``%s`` placeholders."""
    import psycopg

    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            with conn:  # commits, like autocommit on the PostgreSQL side
                return conn.execute(statement.replace("%s", "?"), params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def pg_row_security(url: str) -> dict[str, bool]:
    """Each table of the URL's schema: whether row level security is on."""
    return dict(
        warehouse_query(
            url,
            "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'",
        )
    )


def pg_policies(url: str) -> set[tuple]:
    """The row level security policies of the URL's schema: (table, name, roles, condition)."""
    return {
        (t, p, tuple(sorted(r)), q)
        for t, p, r, q in warehouse_query(
            url,
            "SELECT tablename, policyname, roles, qual FROM pg_policies WHERE schemaname = current_schema()",
        )
    }


@contextlib.contextmanager
def supabase_roles():
    """Roles named as on Supabase (``anon``, ``authenticated``): created if the cluster lacks
    them and dropped afterwards; a cluster-wide advisory lock keeps two test runs from
    dropping them under each other."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(7221099)")
        made = []
        for role in ("anon", "authenticated"):
            if not warehouse_query(PG_URL, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
                warehouse_query(PG_URL, f'CREATE ROLE "{role}" NOLOGIN')
                made.append(role)
        try:
            yield
        finally:
            for role in made:
                warehouse_query(PG_URL, f'DROP ROLE "{role}"')
            lock.execute("SELECT pg_advisory_unlock(7221099)")
