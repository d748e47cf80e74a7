"""The library behind the CLI: each command is one call here (the CLI only parses and
renders). Importable: ``from clearlift_cli import commands``."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from clearlift_cli import connsettings
from clearlift_cli.crypto import FieldCipher, refuse_a_wrong_key
from clearlift_cli.errors import ClearliftError, InvalidInput, UsageError
from clearlift_cli.platforms import registry
from clearlift_cli.settings import Settings
from clearlift_cli.store import Store, is_postgres, open_store_for
from clearlift_cli.store.queue import Queue
from clearlift_cli.timeutil import SYSTEM_CLOCK, UTC, Clock, iso_from_epoch, iso_z, parse_ts

# A token expiry outside these years is a typo, not a token (and the year 1 or 9999 would
# overflow date arithmetic downstream).
EARLIEST_EXPIRY = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EXPIRY = datetime(9000, 1, 1, tzinfo=UTC)
# A lease longer than a day would hide a crashed consumer's job for as long.
MIN_LEASE_SECONDS = 5.0
MAX_LEASE_SECONDS = 86_400.0

log = logging.getLogger("clearlift.consume")

_ACCOUNT_ID_OK = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-.")


def store_for(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> Store:
    store = open_store_for(settings, clock=clock)
    store.require_schema()
    return store


def init(settings: Settings, *, warehouse: bool = True, clock: Clock = SYSTEM_CLOCK) -> list[str]:
    """Create or upgrade the store (and the warehouse schema). Idempotent."""
    if warehouse:
        from clearlift_cli.warehouse import check_url

        check_url(settings.warehouse_url)  # a bad URL creates nothing, the store included
    store = open_store_for(settings, clock=clock, create=True)
    try:
        changes = store.migrate()
    finally:
        store.close()
    if warehouse:
        from clearlift_cli.warehouse import open_warehouse

        wh = open_warehouse(settings.warehouse_url, pg_limits=settings.pg_limits())
        try:
            wh.init_schema(read_policy=settings.warehouse_read_policy)
        finally:
            wh.close()
    return changes


@dataclass(frozen=True)
class NewConnection:
    organization_id: str
    platform: str
    account_id: str
    account_name: str | None
    connected_by: str
    access_token: str
    refresh_token: str | None = None
    expires_at: str | None = None  # any ISO spelling; stored as JavaScript ISO
    settings_json: str | None = None
    scopes: str | None = None


def add_connection(
    settings: Settings, new: NewConnection, *, clock: Clock = SYSTEM_CLOCK
) -> tuple[str, bool]:
    """What the API worker does on OAuth callback: encrypt tokens, upsert the row."""
    _check_identity(new)
    settings_text = _checked_settings(new.settings_json)
    expires = _checked_expiry(new.expires_at)
    if not new.access_token:
        raise UsageError("an access token is required")
    cipher = FieldCipher(settings.key_bytes())
    store = store_for(settings, clock=clock)
    try:
        # Tokens sealed with a wrong key would be unreadable for the API worker and for us.
        refuse_a_wrong_key(
            cipher,
            store.stored_ciphertexts(20),
            "stored connections'",
            "nothing was written",
        )
        return store.upsert_connection(
            organization_id=new.organization_id,
            platform=new.platform,
            account_id=new.account_id,
            account_name=new.account_name,
            connected_by=new.connected_by,
            credentials_encrypted=cipher.encrypt(new.access_token),
            refresh_token_encrypted=cipher.encrypt(new.refresh_token) if new.refresh_token else None,
            expires_at=expires,
            settings_text=settings_text,
            scopes=new.scopes,
        )
    finally:
        store.close()


def _check_identity(new: NewConnection) -> None:
    """A known platform, an account id of safe characters, an organization id."""
    if not registry.is_known(new.platform):
        raise UsageError(registry.unknown_message(new.platform))
    if not new.account_id or not set(new.account_id) <= _ACCOUNT_ID_OK:
        raise UsageError(
            f"account id {new.account_id!r} has characters other than letters, digits, '_', '-', '.'"
        )
    if not new.organization_id.strip():
        raise UsageError("organization id is empty")


def _checked_settings(settings_json: str | None) -> str:
    """The connection's settings as stored: a JSON object within the ranges ``schedule``
    holds every row to (``{}`` when none is given)."""
    if not settings_json:
        return "{}"
    try:
        parsed = json.loads(settings_json)
    except ValueError as exc:
        raise InvalidInput("settings", f"is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("settings", "must be a JSON object, e.g. '{\"sync_interval_minutes\": 30}'")
    try:  # the ranges `schedule` holds every row to
        connsettings.check(parsed)
    except connsettings.SettingsError as exc:
        raise InvalidInput("settings", f": {exc}") from None
    return connsettings.dumps(parsed)


def _checked_expiry(expires_at: str | None) -> str | None:
    """The token's expiry in JavaScript ISO, from any ISO spelling within the accepted range."""
    if not expires_at:
        return None
    try:
        when = parse_ts(expires_at)
    except ValueError:
        raise InvalidInput("expires_at", f"{expires_at!r} is not an ISO timestamp") from None
    assert when is not None
    if not EARLIEST_EXPIRY <= when <= LATEST_EXPIRY:
        raise InvalidInput(
            "expires_at",
            f"{expires_at!r} is out of range ({EARLIEST_EXPIRY.year} to {LATEST_EXPIRY.year})",
        )
    return iso_z(when)


def schedule(settings: Settings, *, clock: Clock = SYSTEM_CLOCK):
    from clearlift_cli import scheduler

    store = store_for(settings, clock=clock)
    try:
        with _recorded(store, "schedule") as run:
            result = scheduler.schedule(store, Queue(store))
            run.summary = result.summary()
        return result
    finally:
        store.close()


def sync_now(
    settings: Settings,
    connection_id: str,
    *,
    since: date | None,
    until: date | None,
    wait: bool = False,
    clock: Clock = SYSTEM_CLOCK,
):
    """``sync CONN --now``: enqueue a full job. With ``wait`` (the job then runs here, see
    ``run_job_here``) whatever would stop that run before it starts — a missing, malformed
    or wrong ENCRYPTION_KEY, an unusable warehouse URL — is refused before anything is
    enqueued (ConfigError, exit 3)."""
    from clearlift_cli import scheduler

    if until and until > clock.now().date() + timedelta(days=1):
        raise InvalidInput("until", f"{until} is in the future")
    store = store_for(settings, clock=clock)
    try:
        if wait:
            from clearlift_cli.warehouse import check_url

            cipher = FieldCipher(settings.key_bytes())
            refuse_a_wrong_key(
                cipher,
                store.stored_ciphertexts(20, first=connection_id),
                "stored connections'",
                "nothing was enqueued",
            )
            check_url(settings.warehouse_url)
        return scheduler.enqueue_manual(store, Queue(store), connection_id, since=since, until=until)
    finally:
        store.close()


def run_job_here(settings: Settings, job_id: str, *, on_progress=None, clock: Clock = SYSTEM_CLOCK):
    """Run one queued job in this process (``sync --now --wait``). If the run fails before
    any consumer has claimed the job, the job is withdrawn (row and message), so a failed
    command leaves nothing queued behind it."""
    from clearlift_cli.errors import ClearliftError

    try:
        return consume(settings, only_job=job_id, concurrency=1, on_progress=on_progress, clock=clock)
    except ClearliftError as exc:
        store = store_for(settings, clock=clock)
        try:
            withdrawn = Queue(store).withdraw_unclaimed(job_id)
        finally:
            store.close()
        if withdrawn:
            note = f"job {job_id} did not start and was withdrawn: nothing is left queued"
            exc.hint = f"{exc.hint}; {note}" if exc.hint else note
        raise


def consume(
    settings: Settings,
    *,
    max_jobs: int | None = None,
    max_seconds: float | None = None,
    concurrency: int = 8,
    lease_seconds: float = 300.0,
    only_job: str | None = None,
    stop_grace: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
    on_progress=None,
    on_consumer=None,
):
    from clearlift_cli.consumer import Consumer

    _check_seconds("lease_seconds", lease_seconds, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS)
    if max_seconds is not None:
        _check_seconds("max_seconds", max_seconds, 1.0, math.inf)
    if stop_grace is not None:  # an endless grace would let one stalled job hold the run for ever
        _check_seconds("stop_grace", stop_grace, 0.0, MAX_LEASE_SECONDS)
    store = store_for(settings, clock=clock)
    warn_dying_versions(settings, clock=clock)
    consumer = Consumer(settings, store, lease_seconds=lease_seconds, on_progress=on_progress)
    if on_consumer:
        on_consumer(consumer)
    try:
        # `sync --wait` runs one job by hand: recorded apart, so it never hides a stopped cron
        with _recorded(store, "sync" if only_job else "consume") as run:
            _check_consume_config(store, consumer)
            grace = {} if stop_grace is None else {"stop_grace": stop_grace}
            result = consumer.run(
                max_jobs=max_jobs,
                max_seconds=max_seconds,
                concurrency=concurrency,
                only_job=only_job,
                **grace,
            )
            run.summary = {**result.summary(), "max_seconds": max_seconds}
            run.outcomes = result.outcomes
        return result
    finally:
        consumer.close()
        store.close()


def warn_dying_versions(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> list[str]:
    """Log a warning (once, for the whole run) for each configured platform API version
    within ``versions.WARN_DAYS`` of its sunset or past it; return the messages."""
    from clearlift_cli.platforms import versions

    today = clock.now().date()
    out = []
    for platform, version in versions.configured_versions(settings).items():
        check = versions.check(platform, version, today)
        if check.state in ("ending", "sunset") and check.message:
            log.warning("%s", check.message)
            out.append(check.message)
    return out


def _check_seconds(field: str, value: float, low: float, high: float) -> None:
    """UsageError (exit 2) unless ``value`` is a finite number of seconds in [low, high]:
    the CLI's own range check lets ``inf`` through, and library callers have none."""
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f"from {low:g} to {high:g}" if math.isfinite(high) else f"of at least {low:g}"
        raise InvalidInput(field, f"must be a finite number of seconds {bounds}, not {value!r}")


def _check_consume_config(store: Store, consumer) -> None:
    """Refuse the run before it claims anything when its configuration would fail every job
    (ConfigError, exit 3): a missing, malformed or wrong ENCRYPTION_KEY or an unusable
    warehouse URL must not dead-letter jobs and mark every connection failed."""
    from clearlift_cli.errors import WarehouseError

    refuse_a_wrong_key(
        consumer.cipher,
        store.queued_ciphertexts(20),
        "queued connections'",
        "no job was claimed",
    )
    from clearlift_cli.warehouse.schema import SCHEMA_VERSION

    try:
        warehouse = consumer.warehouse  # an unknown URL scheme raises ConfigError here
        version = warehouse.schema_version()
    except WarehouseError:
        return  # unreachable now: each job reports it and is retried later
    if version is None or version < SCHEMA_VERSION:
        # e.g. no write fence yet: every job would fail on it
        raise WarehouseError(
            f"warehouse {warehouse.url_for_display} is at schema version {version or 0}, this "
            f"clearlift needs {SCHEMA_VERSION}: run `clearlift init` (no job was claimed)"
        )
    if version > SCHEMA_VERSION:  # a newer clearlift's warehouse: writing could corrupt it
        raise WarehouseError(
            f"the warehouse schema is version {version}, newer than this clearlift understands "
            f"({SCHEMA_VERSION}): upgrade clearlift on this host (no job was claimed)"
        )


def refresh_tokens(settings: Settings, *, margin_seconds: float = 300, clock: Clock = SYSTEM_CLOCK):
    from clearlift_cli import tokens

    store = store_for(settings, clock=clock)
    try:
        with _recorded(store, "refresh-tokens") as run:
            result = tokens.refresh_due(settings, store, margin_seconds=margin_seconds)
            run.summary = {k: v for k, v in result.summary().items() if k != "failures"}
        return result
    finally:
        store.close()


class _Run:
    summary: dict[str, Any]
    outcomes: list

    def __init__(self) -> None:
        self.summary, self.outcomes = {}, []


@contextmanager
def _recorded(store: Store, command: str) -> Iterator[_Run]:
    """Record the run of ``command`` in the store when it ends, or when it fails unexpectedly
    (what ``doctor`` and ``metrics`` read to tell whether cron still runs it)."""
    from clearlift_cli import runs

    started = store.clock.time()
    run = _Run()
    try:
        yield run
    except ClearliftError:
        # refused or stopped with a clear error (a wrong key, a warehouse it cannot use, the
        # store itself): a refused run leaves the store as it was; its error went to cron mail
        raise
    except Exception as exc:
        runs.record(store, command, started_at=started, ok=False, summary=runs.failed_summary(exc))
        raise
    runs.record(store, command, started_at=started, ok=True, summary=run.summary, outcomes=run.outcomes)


def migrate_store(settings: Settings, to_url: str, *, clock: Clock = SYSTEM_CLOCK):
    """Copy the SQLite store into the PostgreSQL control plane at ``to_url``; returns a
    ``store.postgres.CopyResult`` (what was copied, already there, renumbered, not copied)."""
    from clearlift_cli.store.postgres import PgEngine, copy_store

    if not is_postgres(to_url):
        raise InvalidInput("to", "must be a postgresql:// URL")
    if is_postgres(settings.db) or settings.db.startswith("d1://"):
        raise InvalidInput("db", "(the source store, CLEARLIFT_DB) must be a SQLite file")
    src = store_for(settings, clock=clock)
    dst = PgEngine(to_url, clock=clock, limits=settings.pg_limits())
    try:
        return copy_store(src.engine, dst)
    finally:
        src.close()
        dst.close()


def queue_stats(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    store = store_for(settings, clock=clock)
    try:
        s = Queue(store).stats()
        pauses = store.platform_pauses()
    finally:
        store.close()
    return {
        "ready": {"high": s.ready_high, "normal": s.ready_normal},
        "delayed": s.delayed,
        "leased": s.leased,
        "dead": s.dead,
        "done": s.done,
        "oldest_ready_age_seconds": None if s.oldest_ready_age_s is None else round(s.oldest_ready_age_s, 1),
        "paused_platforms": {p: iso_from_epoch(u) for p, u in pauses.items()},
    }


def doctor(settings: Settings, *, clock: Clock = SYSTEM_CLOCK):
    """Every check of ``clearlift doctor`` (see ``clearlift_cli.doctor``)."""
    from clearlift_cli.doctor import diagnose

    return diagnose(settings, clock=clock)


def metrics(settings: Settings, *, output: str | None = None, clock: Clock = SYSTEM_CLOCK) -> str:
    """The Prometheus exposition text; with ``output``, also written there atomically."""
    from clearlift_cli import metrics as exposition
    from clearlift_cli.errors import ConfigError

    store = store_for(settings, clock=clock)
    try:
        text = exposition.render(exposition.collect(store, settings))
    finally:
        store.close()
    if output:
        try:
            exposition.write_atomically(output, text)
        except OSError as exc:
            raise ConfigError(f"cannot write the metrics file {output}: {exc.strerror}") from None
    return text


@dataclass(frozen=True)
class Unpaused:
    platform: str
    was_paused: bool
    released: int  # the platform's jobs deferred by a rate limit, claimable again now


def unpause_platform(settings: Settings, platform: str, *, clock: Clock = SYSTEM_CLOCK) -> Unpaused:
    """Lift a platform-wide rate-limit pause now, and make the platform's jobs that a rate
    limit deferred claimable again (an operator who knows the limit is over)."""
    if not registry.is_known(platform):
        raise UsageError(registry.unknown_message(platform))
    store = store_for(settings, clock=clock)
    try:
        with store.write() as c:
            was_paused = store.lift_platform_pause(c, platform)
            released = Queue(store).release_deferred(c, platform)
    finally:
        store.close()
    return Unpaused(platform, was_paused, released)
