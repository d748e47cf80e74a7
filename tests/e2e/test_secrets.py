"""Secrets (issue 9, scenario 14): with every log level and format, across succeeding and
failing flows on all four platforms (platforms that echo tokens and app secrets back in
their errors), no access token, refresh token, app secret or encryption key reaches
stdout, stderr, a stored error, the status output or the store file's bytes; the store is
0600; and SQL is built only from parameters and fixed identifiers."""

from __future__ import annotations

import ast
import contextlib
import json
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
from tests.harness import Env, store_bytes, store_text
from tests.helpers import REPO

UTC = UTC
PACKAGE = REPO / "clearlift_cli"
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


# --- SQL is built from parameters and fixed identifiers only --------------------------------------

SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|WHERE|VALUES|TRUNCATE|COPY)\b"
)
# Expressions interpolated into SQL text that are fixed identifiers or placeholders, each
# checked by reading the code: constants, names from the schema modules, quoted identifiers.
ALLOWED = {
    # skip: " AND platform NOT IN (?, ?)"; skip_locked / for_update: class constants;
    # marks: rows of "?" placeholders
    "store/queue.py": {"skip", "self.store.skip_locked", "self.store.for_update", "marks"},
    # CONNECTION_COLUMNS / STATUS_COLUMNS (prefixed: cols); LIVE: the fixed live statuses;
    # where: _connection_filter's fixed terms; flag: a fixed CASE condition; metadata_sql: "?"
    # or a fixed json_set expression; marks: "?" placeholders
    "store/operations.py": {
        "CONNECTION_COLUMNS",
        "JobStatus.RUNNING.value",
        "LIVE",
        "cols",
        "flag",
        "metadata_sql",
        "where",
    },
    "store/scheduling.py": {"LIVE", "cols", "live", "marks"},  # live: a fixed NOT EXISTS clause
    # schema.py: table and column names and declarations of the schema itself
    "store/schema.py": {"_NOW_TEXT", "body", "column.ddl(dialect)", "decl", "name", "self.name", "table"},
    "store/sqlite.py": {"BUSY_TIMEOUT_MS", "table"},  # table: a name from schema.py
    "store/d1.py": {"table"},  # a name from schema.APP_TABLE_NAMES
    # schema: [A-Za-z0-9_]+; cols / names / where: column names both stores' schemas share
    "store/postgres.py": {"cols", "names", "where", "table", "marks", "self.schema"},
    "warehouse/sqlite.py": {
        "updates",
        "where",
        "meta",
        "rev",
        "ch",
        "columns",
        "_TYPES[c.kind]",
        "int(self._busy_timeout * 1000)",
        # quoted column lists, and the ON CONFLICT clause built from them
        "old",
        "new",
        "_on_conflict(tbl)",
        "_on_conflict(STRIPE_DAILY_REVENUE)",
    },
}
QUOTING = {"_q", "_cols"}  # the SQLite warehouse's identifier quoting, over schema names


def _dynamic(node: ast.AST) -> list[str]:
    """The parts of a string expression that are not literal text or '?' placeholders."""
    if isinstance(node, ast.Constant):
        return []
    if isinstance(node, ast.JoinedStr):
        return [part for v in node.values if isinstance(v, ast.FormattedValue) for part in _dynamic(v.value)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _dynamic(node.left) + _dynamic(node.right)
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mult)
        and isinstance(node.left, ast.Constant)
        and node.left.value == "?"
    ):
        return []  # '?' * n: placeholders
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and isinstance(node.func.value, ast.Constant)
        and len(node.args) == 1
    ):
        arg = node.args[0]
        return _dynamic(arg.elt if isinstance(arg, (ast.GeneratorExp, ast.ListComp)) else arg)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in QUOTING:
        return []
    return [ast.unparse(node)]


def _has_sql(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and SQL_WORDS.search(n.value)
        for n in ast.walk(node)
    )


def sql_built_from_values(source: str, allowed: set[str]) -> list[tuple[int, str]]:
    """(line, expression) for each value spliced into SQL text by an f-string, ``+``, ``%``
    or ``.format`` that is not in ``allowed``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        parts: list[str] = []
        if isinstance(node, ast.JoinedStr) and _has_sql(node):
            parts = _dynamic(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _has_sql(node):
            parts = _dynamic(node)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and _has_sql(node.left):
            parts = [ast.unparse(node.right)]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
            and _has_sql(node.func.value)
        ):
            parts = [ast.unparse(a) for a in [*node.args, *(k.value for k in node.keywords)]]
        found += [(node.lineno, p) for p in parts if p not in allowed]
    return sorted(set(found))


def test_the_sql_scan_finds_values_spliced_into_sql():
    bad = """
def f(c, user_id, name, days):
    c.execute(f"SELECT * FROM sync_jobs WHERE id = '{user_id}'")
    c.execute("DELETE FROM sync_queue WHERE job_id = " + name)
    c.execute("UPDATE sync_jobs SET status = '%s'" % name)
    c.execute("SELECT * FROM t WHERE d > {}".format(days))
    c.execute("SELECT * FROM sync_jobs WHERE id = ?", (user_id,))
    c.execute(f"SELECT x FROM t WHERE id IN ({','.join('?' * len(name))})", name)
    log.info(f"job {user_id} done")
"""
    assert sql_built_from_values(bad, set()) == [(3, "user_id"), (4, "name"), (5, "name"), (6, "days")]


def test_sql_is_built_only_from_parameters_and_fixed_identifiers():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    # The platform sandboxes talk HTTP and run no SQL (their GAQL errors mention FROM and
    # WHERE); the D1 sandbox is a database, so it is scanned like the rest.
    sandboxes = [f for f in files if f.parent.name == "sandbox" and f.name != "d1.py"]
    for f in sandboxes:
        assert not re.search(r"^\s*(import|from)\s+(sqlite3|psycopg)", f.read_text(), re.M), f
    found = {}
    for f in files:
        if f in sandboxes:
            continue
        rel = f.relative_to(PACKAGE).as_posix()
        spliced = sql_built_from_values(f.read_text(), ALLOWED.get(rel, set()))
        if spliced:
            found[rel] = spliced
    assert found == {}
    # The allowlist names only what is really there (it shrinks when the code does).
    for rel, names in ALLOWED.items():
        used = {p for _, p in sql_built_from_values((PACKAGE / rel).read_text(), set())}
        assert names <= used, (rel, names - used)


# --- URLs: the store's and the warehouse's passwords never reach any output ----------------------


def _with_password(url: str, password: str) -> str:
    """``url`` (trust auth: any password is accepted) with ``password`` in its authority."""
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1) if "@" in rest else ("postgres", rest)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{password}@{host}"


def test_init_prints_the_store_and_warehouse_urls_masked(tmp_path, pg_schema_url):
    from tests.helpers import cli_env, run_cli

    secret = "Hunter2Hunter2xyz"
    url = _with_password(pg_schema_url, secret)
    for variable in ("CLEARLIFT_DB", "CLEARLIFT_WAREHOUSE_URL"):
        proc = run_cli(["-vv", "init"], cli_env(tmp_path, **{variable: url}))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert secret not in out and ":***@" in out, out
    # The store line names the PostgreSQL store, masked.
    proc = run_cli(["init", "--store-only"], cli_env(tmp_path, CLEARLIFT_DB=url))
    assert proc.stdout.startswith("store postgresql://postgres:***@"), proc.stdout


@pytest.mark.parametrize("variable", ["CLEARLIFT_DB", "CLEARLIFT_WAREHOUSE_URL"])
@pytest.mark.parametrize(
    "password,host",
    [
        ("pa ss w0rd", "127.0.0.1:5432"),  # a space: libpq quotes the password back
        ("Sekr1tPw", "[::1"),  # a malformed IPv6 host: urlsplit raises
        ("pw@with/slash", "127.0.0.1:5432"),  # '@' and '/' in the password
        ("x", "[fe80::1%zz]:5432"),  # too short to register: masked all the same
    ],
)
def test_a_malformed_url_is_a_clear_error_that_quotes_neither_password_nor_url(
    tmp_path, variable, password, host
):
    from tests.helpers import cli_env, run_cli

    url = f"postgresql://alice:{password}@{host}/test?connect_timeout=2"
    for args in (["init"], ["consume", "--max-seconds", "1"], ["status"]):
        proc = run_cli(args, cli_env(tmp_path, **{variable: url}))
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out
        assert url not in out, out
        if len(password) > 1:
            assert password not in out, out
        # A command that needs the URL refuses it as configuration, naming it masked.
        if args == ["init"] or variable == "CLEARLIFT_DB" or args[0] == "consume":
            assert proc.returncode == 3, out
            assert "postgresql://alice:***@" in out, out


# --- files that hold secrets or spend figures -------------------------------------------------------


def test_the_embedded_warehouse_and_its_wal_are_created_0600(tmp_path):
    from tests.helpers import cli_env, run_cli

    env = cli_env(tmp_path, CLEARLIFT_WAREHOUSE_URL=None)
    proc = run_cli(["init"], env)
    assert proc.returncode == 0, proc.stderr
    home = tmp_path / "home"
    made = [home / "warehouse.db", home / "warehouse.db-wal", home / "warehouse.db-shm"]
    assert made[0].exists()
    for path in made:
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))


def test_a_key_file_or_config_file_others_can_read_is_warned_about_once(tmp_path):
    from tests.helpers import KEY_B64, cli_env, run_cli

    key_file = tmp_path / "key"
    key_file.write_text(KEY_B64 + "\n")
    config = tmp_path / "config.toml"
    config.write_text('clearlift_http_timeout = "30"\n')
    env = cli_env(
        tmp_path,
        ENCRYPTION_KEY=None,
        ENCRYPTION_KEY_FILE=str(key_file),
        CLEARLIFT_CONFIG=str(config),
        CLEARLIFT_ACCESS_TOKEN="token-token-token",
    )
    assert run_cli(["init"], env).returncode == 0
    add = [
        "-q",
        "connections",
        "add",
        "--org",
        "org-1",
        "--platform",
        "google",
        "--account-id",
        "123",
        "--connected-by",
        "u-1",
    ]

    def warnings() -> list[str]:
        proc = run_cli(add, env)
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stderr.splitlines() if "can be read by other users" in line]

    key_file.chmod(0o644)
    config.chmod(0o640)
    lines = warnings()
    assert len(lines) == 2, lines  # one line each, even with -q
    assert any(str(key_file) in line and "0644" in line for line in lines)
    assert any(str(config) in line and "0640" in line for line in lines)
    assert KEY_B64 not in "\n".join(lines)

    key_file.chmod(0o600)
    config.chmod(0o600)
    assert warnings() == []
