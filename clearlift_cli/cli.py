"""The `clearlift` command: parse options, call one function in ``app``, render the result.

Errors become one line on stderr and an exit code in one place: ``main``.

No ``from __future__ import annotations`` here: Typer reads every command's signature on
every run, and string annotations would be ``eval``-ed one by one (~500 of them, 15 ms).
"""

import json
import signal
import sys
import time
from datetime import date
from typing import Annotated, Any

import typer

from clearlift_cli import lazyparams
from clearlift_cli.errors import ClearliftError, ExitCode, UsageError
from clearlift_cli.platforms import registry

lazyparams.install()  # plain options parse without importing pydantic (start-up)

app = typer.Typer(
    name="clearlift",
    help="Keep advertising and revenue data in sync, from cron.\n\n"
    "Quick start:  clearlift demo        (everything on this machine, no accounts)\n\n"
    "Cron:  */15 schedule · */5 refresh-tokens · * consume (see crontab.example)",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
connections_app = typer.Typer(help="Add, list, pause and resume platform connections.", no_args_is_help=True)
queue_app = typer.Typer(help="Inspect the job queue; list and re-queue dead letters.")
sandbox_app = typer.Typer(
    help="Sandbox platform servers on loopback (for tests, demos, staging).", no_args_is_help=True
)
app.add_typer(connections_app, name="connections")
app.add_typer(queue_app, name="queue")
app.add_typer(sandbox_app, name="sandbox")

# -- options every command shares --------------------------------------------------------

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="CLEARLIFT_DB",
        show_envvar=True,
        help="The store (D1 schema + queue): a SQLite file, or postgresql://… for many hosts.",
    ),
]
WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse-url",
        envvar="CLEARLIFT_WAREHOUSE_URL",
        show_envvar=True,
        help="postgresql://… or sqlite:///path (default: sqlite:///$CLEARLIFT_HOME/warehouse.db).",
    ),
]
HomeOpt = Annotated[
    str | None,
    typer.Option("--home", envvar="CLEARLIFT_HOME", show_envvar=True, help="Where local state lives."),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        envvar="CLEARLIFT_CONFIG",
        show_envvar=True,
        help="TOML config file (same keys, lower case).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]

# -- the JSON each reporting command prints (shown in its --help and docs/commands.md) -----

STATUS_JSON = """\b
JSON (--json) with a connection id: the API's sync-status shape
  {"connection": {"platform", "account_name", "is_active", "last_synced_at", "sync_status"},
   "latest_sync": {"status", "type", "completed_at", "records_synced", "error"} | null}
without one: a list of that shape with "connection_id" first, then "problem" (why
schedule skips a broken row: bad settings, unknown platform) and "deferred" (until when
and why its queued job waits: a rate limit, a retry), each null when none
  [{"connection_id": "org-1-google-123", "connection": {...}, "latest_sync": {...} | null,
    "problem": null, "deferred": {"until": "ISO", "reason": "..."} | null}, ...]
API versions that are sunset or end within 45 days: one "warning:" line each
(on stderr with --json)."""

DOCTOR_JSON = """\b
JSON (--json):
  {"ok": true, "counts": {"ok": 14, "warn": 1, "fail": 0},
   "settings": [{"name": "CLEARLIFT_DB", "value": "/var/lib/clearlift/clearlift.db",
                 "source": "env"}, ...],
   "checks": [{"name": "store", "status": "ok", "message": "...", "fix": null}, ...]}
source is flag, env, config file, default, or "-" (unset); secrets show as "set" / "not set".
Check names: store, encryption_key, warehouse, app_credentials.PLATFORM, api_version.PLATFORM,
queue.dead_letters, queue.oldest_ready, queue.expired_leases, connections, cron.schedule,
cron.consume, cron.refresh-tokens, disk.home, disk.store, disk.warehouse."""

QUEUE_JSON = """\b
JSON (--json):
  {"ready": {"high": 0, "normal": 3}, "delayed": 1, "leased": 2, "dead": 0, "done": 1520,
   "oldest_ready_age_seconds": 42.0 | null,
   "paused_platforms": {"facebook": "2025-10-10T21:00:00.000Z"}}"""

QUEUE_DEAD_JSON = """\b
JSON (--json): newest first
  [{"id": 42, "job_id": "uuid", "connection_id": "org-1-google-123", "platform": "google",
    "attempts": 4, "last_error": "...", "finished_at": "2025-10-10T20:45:30.123Z"}, ...]"""

CONNECTIONS_JSON = """\b
JSON (--json): no secrets
  [{"id": "org-1-google-123", "organization_id": "org-1", "platform": "google",
    "account_id": "123", "account_name": "..." | null, "is_active": true,
    "sync_status": "completed", "last_synced_at": "ISO" | null, "expires_at": "ISO" | null,
    "needs_reauth": false}, ...]"""


_state: dict[str, Any] = {"verbosity": 0, "log_format": "text"}


def _settings(db=None, warehouse_url=None, home=None, config=None):
    from clearlift_cli import logsetup, settings

    logsetup.configure(verbosity=_state["verbosity"], fmt=_state["log_format"])
    return settings.resolve({"db": db, "warehouse_url": warehouse_url, "home": home, "config_path": config})


def _console():
    """Rich on a terminal; wide plain text (no colour, no wrapping) for cron and pipes."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(soft_wrap=False)
    return Console(width=240, no_color=True, soft_wrap=False)


def _summary(line: str) -> None:
    """A run's one-line summary on stdout; -q keeps cron silent unless something failed."""
    if _state["verbosity"] >= 0:
        print(line, flush=True)


def _print_json(data: Any) -> None:
    """Indented JSON; a list puts one compact item per line (the C encoder: 10k rows in
    milliseconds, where indenting them takes a second)."""
    if isinstance(data, list):
        sys.stdout.write(f"[\n  {_json_items(data)}\n]\n" if data else "[]\n")
    else:
        sys.stdout.write(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def _json_items(items: list[Any]) -> str:
    """The items of a list as compact JSON, joined by ``,\\n  ``. One encoder for all of
    them, as ``json.dumps`` builds for one value: building it per item (``json.dumps``
    each) was 40% of the time at 10k rows."""
    encoder = json.JSONEncoder(default=str, allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the same text, slower
        return ",\n  ".join(map(encoder.encode, items))
    # The arguments JSONEncoder.iterencode gives it (no indent, so the C encoder applies).
    encode = make(
        {},
        encoder.default,
        json.encoder.encode_basestring_ascii,
        None,
        encoder.key_separator,
        encoder.item_separator,
        False,
        False,
        False,
    )
    return ",\n  ".join(["".join(encode(item, 0)) for item in items])


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log detail (-vv debug).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="CLEARLIFT_LOG_FORMAT",
            show_envvar=True,
            help="text (default) or json, for log shippers.",
        ),
    ] = "text",
) -> None:
    if log_format not in ("text", "json"):
        raise UsageError("--log-format must be text or json")
    _state["verbosity"] = -1 if quiet else verbose
    _state["log_format"] = log_format


# -- init ------------------------------------------------------------------------------------


@app.command()
def init(
    db: DbOpt = None,
    warehouse_url: WarehouseOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    store_only: Annotated[bool, typer.Option("--store-only", help="Do not touch the warehouse.")] = False,
) -> None:
    """Create or upgrade the store and the warehouse schema (safe to run again).

    Example:  clearlift init --db /var/lib/clearlift/clearlift.db
    """
    from clearlift_cli import commands
    from clearlift_cli.redact import mask_url

    s = _settings(db, warehouse_url, home, config)
    changes = commands.init(s, warehouse=not store_only)
    print(f"store {mask_url(s.db)}: " + ("; ".join(changes) if changes else "up to date"))
    if not store_only:
        print(f"warehouse {mask_url(s.warehouse_url)}: schema up to date")


# -- connections -----------------------------------------------------------------------------


AccessTokenEnvOpt = Annotated[
    str, typer.Option("--access-token-env", help="Read the access token from this environment variable.")
]
RefreshTokenEnvOpt = Annotated[
    str,
    typer.Option("--refresh-token-env", help="Read the refresh token from this environment variable."),
]
TokensStdinOpt = Annotated[
    bool,
    typer.Option(
        "--tokens-stdin", help="Read the access token (line 1) and refresh token (line 2) from stdin."
    ),
]


@connections_app.command("add")
def connections_add(
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
    platform: Annotated[str, typer.Option("--platform", help=f"{registry.spoken_list()}.")],
    account_id: Annotated[str, typer.Option("--account-id", help="The platform's account id.")],
    connected_by: Annotated[str, typer.Option("--connected-by", help="User id who connected it.")],
    account_name: Annotated[str | None, typer.Option("--account-name")] = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="Access token expiry (ISO).")] = None,
    settings_json: Annotated[str | None, typer.Option("--settings", help="Settings JSON object.")] = None,
    scopes: Annotated[str | None, typer.Option("--scopes")] = None,
    access_token_env: AccessTokenEnvOpt = "CLEARLIFT_ACCESS_TOKEN",
    refresh_token_env: RefreshTokenEnvOpt = "CLEARLIFT_REFRESH_TOKEN",
    tokens_stdin: TokensStdinOpt = False,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add or update a connection, encrypting its tokens as the API worker does.

    Tokens never go on the command line (ps would show them): they come from an
    environment variable, stdin, or a prompt.

    Example:  CLEARLIFT_ACCESS_TOKEN=… clearlift connections add --org org-1 --platform google
              --account-id 123-456-7890 --connected-by user-1 --settings '{"sync_interval_minutes": 30}'
    """
    from clearlift_cli import commands

    if not registry.is_known(platform):
        raise UsageError(registry.unknown_message(platform))
    s = _settings(db, None, home, config)
    access, refresh = _read_tokens(tokens_stdin, access_token_env, refresh_token_env)
    cid, created = commands.add_connection(
        s,
        commands.NewConnection(
            organization_id=org,
            platform=platform,
            account_id=account_id,
            account_name=account_name,
            connected_by=connected_by,
            access_token=access,
            refresh_token=refresh,
            expires_at=expires_at,
            settings_json=settings_json,
            scopes=scopes,
        ),
    )
    print(f"{'added' if created else 'updated'} connection {cid}")


def _read_tokens(tokens_stdin: bool, access_token_env: str, refresh_token_env: str) -> tuple[str, str | None]:
    """The access and refresh tokens from stdin, or from their environment variables (the
    access token prompted for in a terminal); no access token is a usage error."""
    from clearlift_cli.settings import secret_from_env

    if tokens_stdin:
        lines = sys.stdin.read().splitlines()
        access = lines[0].strip() if lines else ""
        refresh = lines[1].strip() if len(lines) > 1 and lines[1].strip() else None
    else:
        access = secret_from_env(access_token_env) or ""
        refresh = secret_from_env(refresh_token_env)
        if not access and sys.stdin.isatty():
            access = typer.prompt("Access token", hide_input=True)
    if not access:
        raise UsageError(
            f"no access token: set {access_token_env}, use --tokens-stdin, or run in a terminal to be prompted"
        )
    return access, refresh


@connections_app.command("list", epilog=CONNECTIONS_JSON)
def connections_list(
    as_json: JsonOpt = False,
    org: Annotated[str | None, typer.Option("--org")] = None,
    platform: Annotated[str | None, typer.Option("--platform")] = None,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List connections (no secrets).

    Example:  clearlift connections list --platform google --json
    """
    from clearlift_cli import commands
    from clearlift_cli.render import connections_table

    store = commands.store_for(_settings(db, None, home, config))
    conns = store.list_connections(organization_id=org, platform=platform)
    if as_json:
        _print_json(
            [
                {
                    "id": c.id,
                    "organization_id": c.organization_id,
                    "platform": c.platform,
                    "account_id": c.account_id,
                    "account_name": c.account_name,
                    "is_active": c.is_active,
                    "sync_status": c.sync_status,
                    "last_synced_at": c.last_synced_at,
                    "expires_at": c.expires_at,
                    "needs_reauth": c.needs_reauth,
                }
                for c in conns
            ]
        )
    else:
        _console().print(connections_table(conns))


def _set_active(connection_id: str, active: bool, db, home, config) -> None:
    from clearlift_cli import commands

    commands.store_for(_settings(db, None, home, config)).set_active(connection_id, active)
    print(f"{'resumed' if active else 'paused'} {connection_id}")


@connections_app.command("pause")
def connections_pause(
    connection_id: str, db: DbOpt = None, home: HomeOpt = None, config: ConfigOpt = None
) -> None:
    """Stop syncing a connection (is_active = 0).  Example:  clearlift connections pause org-1-google-123"""
    _set_active(connection_id, False, db, home, config)


@connections_app.command("resume")
def connections_resume(
    connection_id: str, db: DbOpt = None, home: HomeOpt = None, config: ConfigOpt = None
) -> None:
    """Sync a paused connection again (is_active = 1).  Example:  clearlift connections resume org-1-google-123"""
    _set_active(connection_id, True, db, home, config)


# -- schedule / sync / consume / refresh-tokens ---------------------------------------------


@app.command()
def schedule(
    db: DbOpt = None, home: HomeOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Enqueue a job for every due connection (cron: every 15 minutes).

    Exit 0 even when some connections were skipped; non-zero only when the run failed.

    Example:  clearlift schedule
    """
    from clearlift_cli import commands

    t0 = time.monotonic()
    result = commands.schedule(_settings(db, None, home, config))
    summary = result.summary()
    if as_json:
        _print_json(summary)
        return
    # Broken rows were logged once each, as warnings (worth a mail even under -q); rows an
    # overlapping run enqueued meanwhile are only counted.
    adoption = "".join(
        f", {summary[k]} {label}"
        for k, label in (("adopted", "adopted"), ("abandoned_closed", "abandoned closed"))
        if summary[k]
    )
    _summary(
        f"schedule: {summary['found']} candidates, {summary['enqueued']} enqueued, "
        f"{summary['not_due']} not due, {summary['already_queued']} already queued, "
        f"{summary['skipped']} skipped{adoption} in {time.monotonic() - t0:.2f}s"
    )


def _parse_day(value: str | None, flag: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not a date (YYYY-MM-DD)") from None


@app.command()
def sync(
    connection_id: str,
    now: Annotated[bool, typer.Option("--now", help="Enqueue a full job at priority high now.")] = False,
    since: Annotated[str | None, typer.Option("--since", help="First day to (re)sync, YYYY-MM-DD.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Last day to (re)sync, YYYY-MM-DD.")] = None,
    wait_: Annotated[bool, typer.Option("--wait", help="Run the job here with a progress display.")] = False,
    db: DbOpt = None,
    warehouse_url: WarehouseOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Trigger a sync or a backfill of one connection.

    Examples:  clearlift sync org-1-google-123 --now
               clearlift sync org-1-google-123 --now --since 2025-01-01 --until 2025-03-31 --wait
    """
    from clearlift_cli import commands

    if not now:
        raise UsageError("say --now to trigger a sync (scheduled syncs need no command)")
    s = _settings(db, warehouse_url, home, config)
    job_id, window = commands.sync_now(
        s, connection_id, since=_parse_day(since, "--since"), until=_parse_day(until, "--until"), wait=wait_
    )
    print(
        f"enqueued full job {job_id} for {connection_id} ({window.to_json()['start']} .. {window.to_json()['end']}, priority high)"
    )
    if wait_:
        from clearlift_cli.render import run_with_progress

        outcome = run_with_progress(lambda cb: commands.run_job_here(s, job_id, on_progress=cb), job_id)
        if outcome is None or outcome.status != "completed":
            raise typer.Exit(ExitCode.FAILURE)


MaxJobsOpt = Annotated[int | None, typer.Option("--max-jobs", min=1, help="Stop after this many jobs.")]
MaxSecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--max-seconds", min=1, help="Stop claiming after this long (running jobs then get --stop-grace)."
    ),
]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, max=256, help="Jobs run at once.")]
LeaseSecondsOpt = Annotated[
    float,
    typer.Option(
        "--lease-seconds",
        min=5,
        help="How long a claimed job stays invisible to other consumers (kept alive by heartbeat).",
    ),
]
StopGraceOpt = Annotated[
    float,
    typer.Option(
        "--stop-grace",
        min=0,
        help="After --max-seconds or SIGTERM, how long running jobs may take to finish before they are cut and go back to the queue.",
    ),
]


@app.command()
def consume(
    max_jobs: MaxJobsOpt = None,
    max_seconds: MaxSecondsOpt = 600,
    concurrency: ConcurrencyOpt = 8,
    lease_seconds: LeaseSecondsOpt = 300,
    stop_grace: StopGraceOpt = 30,
    db: DbOpt = None,
    warehouse_url: WarehouseOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Claim and run jobs until the queue is empty or a limit is reached (cron: every minute).

    At --max-seconds or on SIGTERM it claims no more; running jobs get --stop-grace seconds to
    finish, then their requests are cut and they go back to the queue (no attempt used, the
    slices they committed kept). A second SIGTERM cuts them at once.

    Example:  flock -n /tmp/clearlift-consume.lock clearlift consume --max-seconds 600 --concurrency 16
    """
    from clearlift_cli import commands

    t0 = time.monotonic()
    result = commands.consume(
        _settings(db, warehouse_url, home, config),
        max_jobs=max_jobs,
        max_seconds=max_seconds,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        stop_grace=stop_grace,
        on_consumer=_stop_on_sigterm(),
    )
    summary = result.summary()
    if as_json:
        _print_json(summary)
    else:
        counts = ", ".join(f"{v} {k}" for k, v in result.counts().items()) or "nothing to do"
        _summary(
            f"consume: {summary['jobs']} jobs ({counts}), {summary['records']} records in "
            f"{time.monotonic() - t0:.2f}s; stopped: {summary['stopped_by']}"
        )


def _stop_on_sigterm() -> Any:
    """Handle SIGTERM from now on: each one stops the consumer (the first: claim no more
    and let running jobs finish; the second: cut them). Returns the ``on_consumer`` hook
    that hands the consumer over, replaying a SIGTERM that came while it was starting up."""
    holder: dict[str, Any] = {"signals": 0}

    def on_sigterm(*_: object) -> None:
        holder["signals"] += 1
        if "c" in holder:
            holder["c"].stop()

    def on_consumer(c) -> None:
        holder["c"] = c
        for _ in range(holder["signals"]):  # a SIGTERM that came while starting up
            c.stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    return on_consumer


@app.command("refresh-tokens")
def refresh_tokens(
    margin: Annotated[
        int,
        typer.Option(
            "--margin",
            min=0,
            help=(
                "Refresh tokens expiring within this many seconds (platforms that need longer keep "
                "theirs: Meta's 60-day tokens from 7 days before expiry)."
            ),
        ),
    ] = 300,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Renew every active connection's token that expires within the margin, or within its
    platform's own longer margin (cron: every 5 minutes).

    Example:  clearlift refresh-tokens --margin 600
    """
    from clearlift_cli import commands

    t0 = time.monotonic()
    result = commands.refresh_tokens(_settings(db, None, home, config), margin_seconds=margin)
    summary = result.summary()
    if as_json:
        _print_json(summary)
        return
    _summary(
        f"refresh-tokens: {summary['refreshed']} refreshed, {summary['skipped']} skipped, "
        f"{summary['failed']} failed ({summary['needs_reauth']} need re-auth) in {time.monotonic() - t0:.2f}s"
    )


# -- status / queue -------------------------------------------------------------------------


def _screenful() -> int:
    """Rows of the status table without --all: what fits a terminal, or 50 in cron mail."""
    import shutil

    if sys.stdout.isatty():
        return max(10, shutil.get_terminal_size().lines - 8)
    return 50


FailingOpt = Annotated[
    bool, typer.Option("--failing", help="Only failing or re-auth connections (every one of them).")
]
AllRowsOpt = Annotated[bool, typer.Option("--all", help="Every connection's row, not just a screenful.")]


@app.command(epilog=STATUS_JSON)
def status(
    connection_id: Annotated[str | None, typer.Argument(help="A connection id; omit for all.")] = None,
    as_json: JsonOpt = False,
    org: Annotated[str | None, typer.Option("--org")] = None,
    platform: Annotated[str | None, typer.Option("--platform")] = None,
    failing: FailingOpt = False,
    all_rows: AllRowsOpt = False,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Where a connection (or every connection) stands.

    With no argument: the counts, then the failing and re-auth connections, then others up
    to a screenful (--all: every row). Exits 1 when any active connection is failing or
    needs re-auth, with or without --json.

    Examples:  clearlift status org-1-google-123 --json
               clearlift status --failing
    """
    from clearlift_cli import commands
    from clearlift_cli import status as st

    s = _settings(db, None, home, config)
    store = commands.store_for(s)
    today = store.clock.now().date()
    if connection_id:
        _status_of_one(s, store, connection_id, today, as_json)
        return
    if as_json:
        rows, any_failing, platforms = st.status_json(
            store, organization_id=org, platform=platform, failing_only=failing
        )
        _warn(st.version_notices(s, platforms, today))
        _print_json(rows)
    else:
        from clearlift_cli import render

        ov = st.overview(
            store,
            organization_id=org,
            platform=platform,
            failing_only=failing,
            limit=None if all_rows else _screenful(),
            settings=s,
        )
        _print_lines(render.status_overview(ov))
        any_failing = ov.any_failing
    if any_failing:
        raise typer.Exit(ExitCode.FAILURE)


def _status_of_one(s: Any, store: Any, connection_id: str, today: date, as_json: bool) -> None:
    """``status CONNECTION_ID``: the API's sync-status shape (--json), or a panel."""
    from clearlift_cli import status as st

    report = st.connection_report(store, connection_id)
    notices = st.version_notices(s, {report.connection.platform}, today)
    if as_json:
        _warn(notices)
        _print_json(st.sync_status(report.connection, report.latest_job))
    else:
        from clearlift_cli import render

        _print_lines([*render.notices(notices), render.connection_panel(report)])


def _print_lines(items: list[Any]) -> None:
    """Each text or table on lines of its own."""
    console = _console()
    for item in items:
        console.print(item)


def _warn(lines: list[str]) -> None:
    for line in lines:
        sys.stderr.write(f"warning: {line}\n")


@queue_app.callback(invoke_without_command=True, epilog=QUEUE_JSON)
def queue_summary(
    ctx: typer.Context,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue depth by priority, leased, delayed, dead-lettered, oldest age.

    Example:  clearlift queue --json
    """
    if ctx.invoked_subcommand:
        return
    from clearlift_cli import commands

    stats = commands.queue_stats(_settings(db, None, home, config))
    if as_json:
        _print_json(stats)
        return
    age = stats["oldest_ready_age_seconds"]
    print(
        f"ready: {stats['ready']['high']} high, {stats['ready']['normal']} normal; delayed: {stats['delayed']}; "
        f"leased: {stats['leased']}; dead: {stats['dead']}; done: {stats['done']}; "
        f"oldest ready: {'-' if age is None else f'{age:.0f}s'}"
    )
    for p, until in stats["paused_platforms"].items():
        print(f"platform {p} paused by a rate limit until {until} (lift it: clearlift queue unpause {p})")


@queue_app.command("dead", epilog=QUEUE_DEAD_JSON)
def queue_dead(
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List dead letters with their last error.  Example:  clearlift queue dead --limit 20"""
    from clearlift_cli import commands
    from clearlift_cli.render import dead_table
    from clearlift_cli.store.queue import Queue

    store = commands.store_for(_settings(db, None, home, config))
    rows = Queue(store).dead_letters(limit)
    if as_json:
        _print_json([dict(r) for r in rows])
    else:
        _console().print(dead_table(rows))


@queue_app.command("retry")
def queue_retry(
    ref: Annotated[str | None, typer.Argument(help="Dead letter id or job id.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Re-queue every dead letter.")] = False,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-queue dead letters (attempts start again from 0).

    Examples:  clearlift queue retry 42      clearlift queue retry --all
    """
    from clearlift_cli import commands
    from clearlift_cli.store.queue import Queue

    if bool(ref) == all_:
        raise UsageError("give one dead letter id (or job id), or --all")
    store = commands.store_for(_settings(db, None, home, config))
    result = Queue(store).requeue_dead(None if all_ else ref)
    print(
        f"re-queued {len(result.requeued)} job(s)"
        + (f", skipped {len(result.skipped)}:" if result.skipped else "")
    )
    for s in result.skipped:
        print(
            f"  skipped dead letter {s.message_id} (job {s.job_id}, connection {s.connection_id}): {s.reason}"
        )


@app.command(epilog=DOCTOR_JSON)
def doctor(
    db: DbOpt = None,
    warehouse_url: WarehouseOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Whether this host can do its job: settings and where each came from, the encryption
    key against stored tokens, store, warehouse, app credentials, API versions, queue,
    failing connections, when cron last ran schedule / consume / refresh-tokens, disk space.

    One line per check (ok / warn / fail) with what to do. Exit 0 only when nothing fails.

    Example:  clearlift doctor
    """
    from clearlift_cli import commands, render

    report = commands.doctor(_settings(db, warehouse_url, home, config))
    if as_json:
        _print_json(report.to_json())
    else:
        sys.stdout.write(render.doctor_text(report))
    if not report.ok:
        raise typer.Exit(ExitCode.FAILURE)


@app.command()
def metrics(
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file atomically (temporary file + rename), for node_exporter's "
            "textfile collector; without it, print to stdout.",
        ),
    ] = None,
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Queue, connections, jobs and cron runs in the Prometheus text exposition format.

    Example:  clearlift metrics --output /var/lib/node_exporter/textfile/clearlift.prom
    """
    from clearlift_cli import commands

    text = commands.metrics(_settings(db, None, home, config), output=output)
    if not output:
        sys.stdout.write(text)


@queue_app.command("unpause")
def queue_unpause(
    platform: Annotated[str, typer.Argument(help=f"{registry.spoken_list()}.")],
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Lift a platform-wide rate-limit pause now, and make that platform's jobs deferred by a
    rate limit claimable again (when you know the limit is over, e.g. a quota was raised).

    Example:  clearlift queue unpause google
    """
    from clearlift_cli import commands

    done = commands.unpause_platform(_settings(db, None, home, config), platform)
    print(
        f"{done.platform}: {'pause lifted' if done.was_paused else 'was not paused'}; "
        f"{done.released} deferred job(s) claimable now"
    )


@app.command("migrate-store")
def migrate_store(
    to: Annotated[str, typer.Option("--to", help="postgresql://… URL of the new control plane.")],
    db: DbOpt = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy this SQLite store (connections, jobs, queue, dead letters, coverage) into a
    PostgreSQL control plane, once, for a team moving from one host to many. Rows already
    there are kept, so running it again copies only what is new. Nothing is dropped
    silently: what cannot be copied is listed on stderr, and the exit code is then 1.

    Example:  CLEARLIFT_DB=/var/lib/clearlift/clearlift.db clearlift migrate-store --to postgresql://clearlift@db/clearlift
    """
    from clearlift_cli import commands

    result = commands.migrate_store(_settings(db, None, home, config), to)
    if as_json:
        _print_json(result.to_json())
    else:
        print("copied " + ", ".join(f"{n} {t}" for t, n in result.copied.items()))
        kept = ", ".join(f"{n} {t}" for t, n in result.already_there.items() if n)
        if kept:
            print(f"already there (kept as they are): {kept}")
        for table, n in result.renumbered.items():
            print(f"{n} {table} rows copied under new ids (the destination already used theirs)")
        print("next: set CLEARLIFT_DB to the PostgreSQL URL on every host")
    for table, row, reason in result.not_copied:
        sys.stderr.write(f"not copied: {table} {row}: {reason}\n")
    if result.not_copied:
        raise typer.Exit(ExitCode.FAILURE)


# -- demo / sandbox -------------------------------------------------------------------------


@app.command()
def demo(
    home: Annotated[
        str | None,
        typer.Option(
            "--home", help="Keep the demo's store and warehouse here (default: a temporary directory)."
        ),
    ] = None,
    d1: Annotated[
        bool,
        typer.Option(
            "--d1",
            help="Keep ClearLift's tables in a sandbox D1 reached over Cloudflare's REST API (as with "
            "CLEARLIFT_DB=d1://…), clearlift's own in control.db.",
        ),
    ] = False,
) -> None:
    """The whole pipeline on this machine with no accounts: sandbox APIs on loopback,
    embedded store and warehouse.

    Example:  clearlift demo --home /tmp/cl-demo && CLEARLIFT_HOME=/tmp/cl-demo clearlift status
    Example:  clearlift demo --d1        (the same through a sandbox D1)
    """
    from clearlift_cli import logsetup
    from clearlift_cli.demo import run_demo

    logsetup.configure(verbosity=_state["verbosity"] - 1, fmt=_state["log_format"])
    run_demo(home, _console(), d1=d1)


@sandbox_app.command("serve")
def sandbox_serve(
    host: Annotated[str, typer.Option("--host", help="Loopback address to bind.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            help=f"First port ({registry.names()[0]}); the next ones serve "
            f"{', '.join(registry.names()[1:])} and D1. 0: any free ports.",
        ),
    ] = 0,
    token_ttl: Annotated[
        float | None,
        typer.Option("--token-ttl", help="Seconds the printed access tokens live (default: never expire)."),
    ] = None,
) -> None:
    """Run the sandbox platform servers until interrupted; prints the settings to use.

    Example:  clearlift sandbox serve --port 8700
    """
    from clearlift_cli.sandbox.serve import serve

    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise UsageError("the sandbox binds to loopback only")
    serve(host, port, token_ttl)


def _flag_of(parameter: str) -> str:
    """The command-line flag of a library parameter an ``InvalidInput`` names."""
    return {"db": "--db / CLEARLIFT_DB"}.get(parameter, "--" + parameter.replace("_", "-"))


def main() -> None:
    """Entry point: runs the app and turns every ClearliftError into one line + exit code."""
    try:
        app()
    except ClearliftError as exc:
        from clearlift_cli.errors import InvalidInput
        from clearlift_cli.redact import redact

        text = exc.worded(_flag_of) if isinstance(exc, InvalidInput) else str(exc)
        sys.stderr.write(f"error: {redact(text)}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {redact(exc.hint)}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
