"""`clearlift doctor`: whether this host can do its job, one check at a time.

Each check ends ``ok``, ``warn`` or ``fail`` with what was found and what to do. A check
never raises: whatever goes wrong becomes its result, so one broken thing (an unreachable
warehouse) never hides the others. Checks that need the store are left out when the store
itself cannot be opened (its own check says why).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clearlift_cli.errors import ClearliftError, CryptoError, DecryptionFailed, MissingKey
from clearlift_cli.redact import redact
from clearlift_cli.settings import ENV_NAMES, Settings, sources
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock, from_epoch, iso_z

OK, WARN, FAIL = "ok", "warn", "fail"

# Stored tokens decrypted to prove the key; random, so a partly re-keyed store shows.
TOKEN_SAMPLE = 50
# Queue: a ready message older than these means consume is not keeping up, or not running.
READY_AGE_WARN_S = 10 * 60
READY_AGE_FAIL_S = 60 * 60
# Free space where the SQLite files live.
DISK_FAIL_BYTES, DISK_FAIL_FRACTION = 100 * 2**20, 0.02
DISK_WARN_BYTES, DISK_WARN_FRACTION = 2**30, 0.10
# Slack on top of a cron command's interval and run time before it counts as late.
CRON_GRACE_S = 60


@dataclass(frozen=True)
class Check:
    name: str  # stable: "store", "encryption_key", "cron.consume", ...
    status: str  # ok | warn | fail
    message: str  # what was found
    fix: str | None = None  # what to do about it

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    settings: list[tuple[str, str, str]]  # (environment name, shown value, source)
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARN, FAIL)}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "settings": [{"name": n, "value": v, "source": s} for n, v, s in self.settings],
            "checks": [c.to_json() for c in self.checks],
        }


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 2 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def _guarded(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    """A check that raises anyway (a bug, an odd store) is reported, not propagated."""
    try:
        return check()
    except ClearliftError as exc:
        return [Check(name, FAIL, redact(exc), redact(exc.hint) if exc.hint else None)]
    except Exception as exc:  # noqa: BLE001 - doctor must finish and show every other check
        return [Check(name, FAIL, redact(f"{type(exc).__name__}: {exc}"))]


def diagnose(settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> DoctorReport:
    from clearlift_cli.store import open_store_for

    checks: list[Check] = []
    store = None
    try:
        store = open_store_for(settings, clock=clock)
    except ClearliftError as exc:
        checks.append(
            Check(
                "store",
                FAIL,
                redact(exc),
                "set CLEARLIFT_DB to the store, or run `clearlift init` to create it",
            )
        )
    try:
        if store is not None:
            checks += _guarded("store", lambda: _store(store))
        checks += _guarded("encryption_key", lambda: _encryption_key(settings, store))
        checks += _guarded("warehouse", lambda: _warehouse(settings))
        active = None
        if store is not None and not any(c.name == "store" and c.status == FAIL for c in checks):
            counts = store.connection_counts()
            active = _active_by_platform(counts)
            checks += _guarded("app_credentials", lambda: _app_credentials(settings, counts))
            checks += _guarded("api_version", lambda: _api_versions(settings, active, clock))
            checks += _guarded("queue", lambda: _queue(store))
            checks += _guarded("connections", lambda: _connections(counts))
            checks += _guarded("cron", lambda: _cron(store))
        else:
            checks += _guarded("api_version", lambda: _api_versions(settings, None, clock))
        checks += _guarded("disk", lambda: _disk(settings, store))
    finally:
        if store is not None:
            store.close()
    return DoctorReport(sources(settings), checks)


# -- the checks ---------------------------------------------------------------------------


def _store(store) -> list[Check]:
    from clearlift_cli.store import SCHEMA_VERSION

    version = store.schema_version()
    where = f"{store.display} ({store.backend})"
    if version < SCHEMA_VERSION:
        return [
            Check(
                "store",
                FAIL,
                f"{where}: schema version {version}, this clearlift needs {SCHEMA_VERSION}",
                "run `clearlift init` (adds only what is missing)",
            )
        ]
    store.check_writable()
    if version > SCHEMA_VERSION:
        return [
            Check(
                "store",
                WARN,
                f"{where}: schema version {version} is newer than this clearlift's "
                f"{SCHEMA_VERSION}; writable",
                "upgrade clearlift on this host",
            )
        ]
    return [Check("store", OK, f"{where}: schema version {version}, writable")]


def _encryption_key(settings: Settings, store) -> list[Check]:
    from clearlift_cli.crypto import FieldCipher

    fix = "set ENCRYPTION_KEY (or ENCRYPTION_KEY_FILE) to the API worker's key, base64 of 32 bytes"
    try:
        cipher = FieldCipher(settings.key_bytes())
    except MissingKey as exc:  # its message says what to set
        return [Check("encryption_key", FAIL, redact(exc))]
    except CryptoError as exc:  # not base64, not 32 bytes
        return [Check("encryption_key", FAIL, redact(exc), fix)]
    if store is None:
        return [
            Check("encryption_key", OK, "well-formed (no stored token tried: the store cannot be opened)")
        ]
    try:
        sample = store.token_sample(TOKEN_SAMPLE)
    except ClearliftError as exc:
        return [Check("encryption_key", WARN, f"well-formed; stored tokens could not be read: {redact(exc)}")]
    if not sample:
        return [Check("encryption_key", OK, "well-formed (no stored tokens to try yet)")]
    wrong: list[str] = []
    malformed: list[str] = []
    for connection_id, _column, ciphertext in sample:
        try:
            cipher.decrypt(ciphertext)
        except DecryptionFailed:
            wrong.append(connection_id)
        except CryptoError:
            malformed.append(connection_id)
    bad = len(wrong) + len(malformed)
    found = f"decrypts {len(sample) - bad} of {len(sample)} sampled stored tokens"
    if len(wrong) >= 2 and len(wrong) == len(sample) - len(malformed):
        return [
            Check(
                "encryption_key",
                FAIL,
                f"well-formed, but {found}: it is not the key the API worker encrypted them with",
                fix,
            )
        ]
    if bad:
        ids = sorted(set(wrong + malformed))
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        return [
            Check(
                "encryption_key",
                WARN,
                f"well-formed; {found} ({len(wrong)} fail authentication, "
                f"{len(malformed)} malformed): {shown}",
                "those connections must be reconnected (or their rows were written with another key)",
            )
        ]
    return [Check("encryption_key", OK, f"well-formed; {found}")]


def _warehouse(settings: Settings) -> list[Check]:
    from clearlift_cli.redact import mask_url
    from clearlift_cli.warehouse import open_warehouse
    from clearlift_cli.warehouse.schema import SCHEMA_VERSION

    url = settings.warehouse_url
    shown = mask_url(url)
    if url.lower().startswith("sqlite:"):
        from clearlift_cli.warehouse.sqlite import path_from_url

        # opening would create it: say it is missing instead
        if not Path(path_from_url(url)).expanduser().exists():
            return [Check("warehouse", FAIL, f"{shown} does not exist", "run `clearlift init`")]
    try:
        wh = open_warehouse(url)
    except ClearliftError as exc:
        return [
            Check(
                "warehouse",
                FAIL,
                f"{shown} cannot be reached: {redact(exc)}",
                "check CLEARLIFT_WAREHOUSE_URL, the server, the network and the credentials",
            )
        ]
    try:
        version = wh.schema_version()
    finally:
        wh.close()
    if version is None or version < SCHEMA_VERSION:
        return [
            Check(
                "warehouse",
                FAIL,
                f"{shown}: reachable, schema "
                + ("missing" if version is None else f"version {version} (needs {SCHEMA_VERSION})"),
                "run `clearlift init`",
            )
        ]
    if version > SCHEMA_VERSION:
        return [
            Check(
                "warehouse",
                WARN,
                f"{shown}: schema version {version} is newer than this clearlift's",
                "upgrade clearlift on this host",
            )
        ]
    return [Check("warehouse", OK, f"{shown}: reachable, schema version {version}")]


def _active_by_platform(counts) -> dict[str, tuple[int, int]]:
    """platform -> (active connections, of which holding a token that expires)."""
    out: dict[str, tuple[int, int]] = {}
    for platform, active, _status, _reauth, n, expiring in counts:
        if active:
            a, e = out.get(platform, (0, 0))
            out[platform] = (a + n, e + expiring)
    return out


def _app_credentials(settings: Settings, counts) -> list[Check]:
    from clearlift_cli.platforms import registry

    out = []
    for platform, (active, expiring) in sorted(_active_by_platform(counts).items()):
        name = f"app_credentials.{platform}"
        known = registry.find(platform)
        if known is None:
            out.append(
                Check(
                    name,
                    WARN,
                    f"{active} active connection(s) of a platform clearlift does not know",
                    "pause them (`clearlift connections pause ID`) or upgrade clearlift",
                )
            )
            continue
        needed = list(known.requires)
        missing_always = [ENV_NAMES[f] for f in needed if not getattr(settings, f)]
        refresh = list(known.refresh_requires)
        missing_refresh = [ENV_NAMES[f] for f in refresh if not getattr(settings, f)]
        what = f"{active} active connection(s)"
        if missing_always:
            out.append(
                Check(
                    name,
                    FAIL,
                    f"{what}, but {', '.join(missing_always)} not set: every job fails",
                    f"set {', '.join(missing_always)}",
                )
            )
        elif missing_refresh and expiring:
            out.append(
                Check(
                    name,
                    FAIL,
                    f"{what}, {expiring} with tokens that expire, but "
                    f"{', '.join(missing_refresh)} not set: their tokens cannot be renewed",
                    f"set {', '.join(missing_refresh)}",
                )
            )
        else:
            have = [ENV_NAMES[f] for f in needed + (refresh if expiring else [])]
            out.append(
                Check(
                    name,
                    OK,
                    f"{what}; " + (f"{', '.join(have)} set" if have else "no app credentials needed"),
                )
            )
    return out


def _api_versions(settings: Settings, active: dict[str, tuple[int, int]] | None, clock: Clock) -> list[Check]:
    from clearlift_cli.platforms.versions import VERSION_SETTINGS, check, configured_versions

    today = clock.now().date()
    out = []
    for platform, version in configured_versions(settings).items():
        vc = check(platform, version, today)
        name = f"api_version.{platform}"
        used = active is None or platform in active
        setting = VERSION_SETTINGS.get(platform)
        fix = f"set {setting}" if setting else "upgrade clearlift"
        if vc.state == "sunset":
            out.append(Check(name, FAIL if used else WARN, vc.message or "", fix))
        elif vc.state in ("ending", "unknown"):
            out.append(Check(name, WARN, vc.message or "", fix))
        else:
            until = (
                f"sunset {vc.sunset.isoformat()}, in {(vc.sunset - today).days} days"
                if vc.sunset
                else "no sunset date published"
            )
            out.append(Check(name, OK, f"{version} ({until})"))
    return out


def _queue(store) -> list[Check]:
    from clearlift_cli.store.queue import Queue

    q = Queue(store)
    depth = q.depth()
    stats = q.stats()
    dead = depth[("dead", "high")] + depth[("dead", "normal")]
    expired = depth[("expired", "high")] + depth[("expired", "normal")]
    out = []
    if dead:
        out.append(
            Check(
                "queue.dead_letters",
                WARN,
                f"{dead} dead letter(s): jobs that failed for good",
                "`clearlift queue dead` lists them; `clearlift queue retry ID|--all` re-queues",
            )
        )
    else:
        out.append(Check("queue.dead_letters", OK, "no dead letters"))
    age = stats.oldest_ready_age_s
    ready = stats.ready_high + stats.ready_normal
    if age is None:
        out.append(Check("queue.oldest_ready", OK, "no message waiting"))
    else:
        found = f"{ready} ready message(s), the oldest waiting {_age(age)}"
        fix = "check that `clearlift consume` runs (cron), and raise --concurrency or add hosts if it is busy"
        status = FAIL if age > READY_AGE_FAIL_S else WARN if age > READY_AGE_WARN_S else OK
        out.append(Check("queue.oldest_ready", status, found, None if status == OK else fix))
    if expired:
        out.append(
            Check(
                "queue.expired_leases",
                WARN,
                f"{expired} lease(s) past due: a consumer died or hangs mid-job (the next claim takes them back)",
                "look for killed or stuck `clearlift consume` processes (OOM killer, timeouts)",
            )
        )
    else:
        out.append(Check("queue.expired_leases", OK, "no lease past due"))
    return out


def _connections(counts) -> list[Check]:
    active = failing = reauth = 0
    for _platform, is_active, status, needs_reauth, n, _exp in counts:
        if not is_active:
            continue
        active += n
        if needs_reauth:
            reauth += n
        elif status == "failed":
            failing += n
    found = f"{active} active: {failing} failing, {reauth} need re-auth"
    if failing or reauth:
        return [
            Check("connections", WARN, found, "`clearlift status --failing` lists them with their errors")
        ]
    return [Check("connections", OK, found)]


def _cron(store) -> list[Check]:
    import json

    from clearlift_cli.runs import CRON_COMMANDS

    now = store.clock.time()
    last = store.last_runs()
    out = []
    for name, cmd in CRON_COMMANDS.items():
        check_name = f"cron.{name}"
        every = _age(cmd.interval_seconds)
        fix = f"check that cron runs `clearlift {name}` (see crontab.example) and read its mail or logs"
        run = last.get(name)
        if run is None:
            out.append(
                Check(
                    check_name,
                    WARN,
                    f"no {name} run recorded on this store yet (expected every {every})",
                    fix,
                )
            )
            continue
        try:
            summary = json.loads(run["summary"] or "{}")
        except ValueError:
            summary = {}
        run_seconds = cmd.default_run_seconds
        if isinstance(summary.get("max_seconds"), (int, float)):
            run_seconds = float(summary["max_seconds"])
        allowed = cmd.interval_seconds + run_seconds + CRON_GRACE_S
        latest_failed = ""
        if not run["ok"]:
            latest_failed = (
                f"; the latest run ({_age(now - run['finished_at'])} ago on {run['host']}) failed: "
                f"{redact(summary.get('error', 'unknown error'))}"
            )
        if run["last_ok_at"] is None:
            out.append(Check(check_name, FAIL, f"no successful {name} run recorded{latest_failed}", fix))
            continue
        age = now - run["last_ok_at"]
        found = (
            f"last successful run finished {_age(age)} ago ({iso_z(from_epoch(run['last_ok_at']))}; "
            f"expected every {every}){latest_failed}"
        )
        if age > 2 * allowed:
            out.append(Check(check_name, FAIL, found, fix))
        elif age > allowed or latest_failed:
            out.append(Check(check_name, WARN, found, fix))
        else:
            out.append(Check(check_name, OK, found))
    return out


def _disk(settings: Settings, store) -> list[Check]:
    from clearlift_cli.warehouse.sqlite import path_from_url

    places: list[tuple[str, Path]] = [("home", Path(settings.home))]
    if store is not None:
        places += [("store", Path(p)) for p in store.local_files]
    elif not settings.db.startswith(("postgresql://", "postgres://")) and "://" not in settings.db:
        places.append(("store", Path(settings.db)))
    if settings.warehouse_url.lower().startswith("sqlite:"):
        try:
            places.append(("warehouse", Path(path_from_url(settings.warehouse_url))))
        except ClearliftError:
            pass  # the warehouse check says what is wrong with the URL
    seen: dict[int, Check] = {}
    out = []
    for label, path in places:
        existing = path.expanduser()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            dev = existing.stat().st_dev
            usage = shutil.disk_usage(existing)
        except OSError as exc:
            out.append(Check(f"disk.{label}", WARN, f"{path}: {exc.strerror}"))
            continue
        if dev in seen:
            continue
        free, frac = usage.free, usage.free / usage.total if usage.total else 0.0
        found = f"{existing}: {free / 2**30:.1f} GiB free ({frac:.0%})"
        fix = "free space or move CLEARLIFT_HOME / the SQLite files to a larger disk"
        if free < DISK_FAIL_BYTES or frac < DISK_FAIL_FRACTION:
            seen[dev] = Check(f"disk.{label}", FAIL, found, fix)
        elif free < DISK_WARN_BYTES or frac < DISK_WARN_FRACTION:
            seen[dev] = Check(f"disk.{label}", WARN, found, fix)
        else:
            seen[dev] = Check(f"disk.{label}", OK, found)
        out.append(seen[dev])
    return out


__all__ = ["Check", "DoctorReport", "diagnose", "OK", "WARN", "FAIL"]
