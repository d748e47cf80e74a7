"""What the benchmarks share: arguments, output, a fresh PostgreSQL schema, the sandbox in a
process of its own, a store filled in bulk, and wall time / peak RSS of subprocesses."""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

PG_URL = os.environ.get("CLEARLIFT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
CLEARLIFT = shutil.which("clearlift", path=str(Path(sys.executable).parent)) or "clearlift"
PLATFORM_MIX = ("google", "facebook", "tiktok", "stripe")


# --- arguments and output ---------------------------------------------------------------------


def parse_args(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, well under a minute")
    return parser.parse_args()


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(label: str, value: object, note: str = "") -> None:
    print(f"  {label:<46} {value}" + (f"   {note}" if note else ""), flush=True)


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def emit(name: str, **figures: Any) -> None:
    """The last line of every benchmark: its figures as one JSON object."""
    print(json.dumps({"benchmark": name, **figures}), flush=True)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.seconds = 0.0
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


# --- places to work in -------------------------------------------------------------------------


@contextmanager
def temp_home(prefix: str = "clearlift-bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


@contextmanager
def pg_schema(prefix: str = "bench") -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped at the end."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    try:
        admin.execute(f'CREATE SCHEMA "{name}"')
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={name}')}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def settings_for(home: Path, *, environ: dict[str, str] | None = None, **flags: Any):
    """Settings for a benchmark home (no config file, nothing from os.environ)."""
    from clearlift_cli.settings import resolve

    return resolve(flags={"home": str(home), **flags}, environ=environ or {}, read_config=False)


def app_init_store(home: Path) -> str:
    """``clearlift init`` (store only) in ``home``; returns the store's path."""
    from clearlift_cli import commands

    s = settings_for(home)
    commands.init(s, warehouse=False)
    return s.db


def compile_bytecode() -> None:
    """Write clearlift's bytecode, as pip does when it installs the package, so a command
    timed from a checkout starts as an installed one does (run with
    PYTHONDONTWRITEBYTECODE, it would compile every module again on every run: ~30 ms)."""
    import compileall

    import clearlift_cli

    compileall.compile_dir(str(Path(clearlift_cli.__file__).parent), quiet=1)


def cli_environ(home: Path, **more: str) -> dict[str, str]:
    """The environment for the installed command: this one minus clearlift's settings."""
    prefixes = ("CLEARLIFT_", "GOOGLE_", "FACEBOOK_", "TIKTOK_", "ENCRYPTION_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["CLEARLIFT_HOME"] = str(home)
    env.update(more)
    return env


# --- the sandbox in its own process ------------------------------------------------------------


class SandboxProcess:
    """The four sandbox platforms in a child process, so their CPU and memory stay out of the
    process being measured; driven over a pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sandbox_main, args=(child,), daemon=True)
        self.env: dict[str, str] = {}

    def __enter__(self) -> SandboxProcess:
        self._proc.start()
        self.env = self._call("env")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)

    def _call(self, *command: Any) -> Any:
        self._conn.send(command)
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"sandbox: {value}")
        return value

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def configure(self, platform: str, account_id: str, **changes: Any) -> None:
        self._call("configure", platform, account_id, changes)

    def issue_token(self, platform: str, ttl: float | None = None) -> tuple[str, str]:
        return self._call("issue", platform, ttl)

    def set_latency(self, seconds: float) -> None:
        """Every request to every platform waits this long before it is answered."""
        self._call("latency", seconds)

    def request_count(self) -> int:
        """Requests received by all platforms since the last ``reset_requests``."""
        return self._call("count")

    def reset_requests(self) -> None:
        self._call("reset")


def _sandbox_main(conn) -> None:
    from clearlift_cli.sandbox import Sandbox, server

    # The handler sends headers and body in two writes; with Nagle on, the body waits for
    # the client's delayed ACK (~40 ms per request), which would be measured as ours.
    server._Handler.disable_nagle_algorithm = True
    sb = Sandbox().start()
    apps = [sb.app(p) for p in PLATFORM_MIX]

    def run(command: tuple) -> Any:
        op, *args = command
        if op == "env":
            return sb.env()
        if op == "configure":
            platform, account_id, changes = args
            sb.app(platform).configure_account(account_id, **changes)
            return None
        if op == "issue":
            return sb.issue_token(args[0], ttl=args[1])
        if op == "latency":
            for app in apps:
                app.faults.latency_seconds = float(args[0])
            return None
        if op == "count":
            return sum(len(app.requests) for app in apps)
        if op == "reset":
            for app in apps:
                with app._log_lock:
                    app.requests.clear()
            return None
        raise ValueError(f"unknown command {op!r}")

    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:
                break
            if command[0] == "stop":
                break
            try:
                conn.send((True, run(command)))
            except Exception as exc:  # report to the driver instead of dying silently
                conn.send((False, repr(exc)))
    finally:
        sb.stop()


# --- a store filled in bulk --------------------------------------------------------------------


def iso_ms(dt: datetime) -> str:
    """JavaScript's toISOString(), as the API worker writes timestamps."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class FilledStore:
    total: int
    due: int
    not_due: int
    paused: int
    seconds: float = 0.0


def fill_store(db: str | Path, total: int, due: int, *, now: datetime | None = None) -> FilledStore:
    """Insert ``total`` connections straight into an initialised store, the way years of the
    API worker would leave it: ``due`` of them due now (half never synced, half synced two
    hours ago), 1% of the rest paused long ago, the others synced within the hour; one
    completed job per synced connection and the attribution state of synced Facebook ones."""
    import sqlite3

    now = now or datetime.now(UTC)
    t0 = time.perf_counter()
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = OFF")
    paused = (total - due) // 100
    connected = iso_ms(now - timedelta(days=400))
    two_hours = iso_ms(now - timedelta(hours=2))
    long_ago = iso_ms(now - timedelta(days=30))
    recent = [iso_ms(now - timedelta(minutes=1 + m)) for m in range(55)]

    def rows(lo: int, hi: int):
        for i in range(lo, hi):
            platform = PLATFORM_MIX[i % 4]
            org = f"org-{i // 4:07d}"
            account = str(1_000_000_000 + i)
            active = 1
            if i < due:
                last = None if i % 2 == 0 else two_hours
            elif i < due + paused:
                last, active = long_ago, 0
            else:
                last = recent[i % len(recent)]
            yield (
                f"{org}-{platform}-{account}",
                org,
                platform,
                account,
                f"{platform} {account}",
                f"user-{i // 4}",
                connected,
                last,
                "pending" if last is None else "completed",
                active,
                "{}",
                "bench-ciphertext",
                None,
                None,
                0,
                0,
            )

    def jobs(lo: int, hi: int):
        for i in range(lo, hi):
            if i < due and i % 2 == 0:
                continue  # never synced: no job yet
            platform = PLATFORM_MIX[i % 4]
            cid = f"org-{i // 4:07d}-{platform}-{1_000_000_000 + i}"
            yield (
                f"job-{i:08d}",
                f"org-{i // 4:07d}",
                cid,
                "completed",
                "incremental",
                connected,
                connected,
                connected,
                42,
                '{"records_synced": 42}',
                connected,
            )

    def states(lo: int, hi: int):
        for i in range(lo, hi):
            if PLATFORM_MIX[i % 4] == "facebook" and not (i < due and i % 2 == 0):
                yield (f"org-{i // 4:07d}-facebook-{1_000_000_000 + i}", two_hours)

    step = 50_000
    for lo in range(0, total, step):
        hi = min(total, lo + step)
        c.execute("BEGIN")
        c.executemany(
            "INSERT INTO platform_connections (id, organization_id, platform, account_id, "
            "account_name, connected_by, connected_at, last_synced_at, sync_status, is_active, "
            "settings, credentials_encrypted, refresh_token_encrypted, expires_at, needs_reauth, "
            "consecutive_auth_failures) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(lo, hi),
        )
        c.executemany(
            "INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, "
            "started_at, completed_at, created_at, records_synced, metadata, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            jobs(lo, hi),
        )
        c.executemany(
            "INSERT INTO clearlift_connection_state (connection_id, last_attribution_window_at) "
            "VALUES (?, ?)",
            states(lo, hi),
        )
        c.execute("COMMIT")
    c.execute("ANALYZE")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    # On disk, as years of the API worker leave it: without this the first checkpoint of
    # whatever is measured next (its fsync) writes out the whole fill (~0.2 s at 1M rows).
    fd = os.open(str(db), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return FilledStore(total, due, total - due - paused, paused, time.perf_counter() - t0)


# --- subprocesses ------------------------------------------------------------------------------


def wall_times(
    argv: list[str], *, runs: int, env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,)
) -> list[float]:
    """Wall seconds of ``runs`` runs of ``argv`` (after one unmeasured warm-up run)."""
    out = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        wall = time.perf_counter() - t0
        if proc.returncode not in ok_codes:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        if i:
            out.append(wall)
    return out


def interleaved_times(
    commands: dict[str, tuple[list[str], dict[str, str]]], *, runs: int, ok_codes: tuple[int, ...] = (0,)
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of ``runs`` runs of each ``name: (argv, env)``, taken in turn (one
    of each, then again) after one unmeasured warm-up of each, so that load from other work
    on a shared machine falls on every command alike. CPU is the child's user + system time."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for i in range(runs + 1):
        for name, (argv, env) in commands.items():
            with tempfile.TemporaryFile() as err:
                t0 = time.perf_counter()
                proc = subprocess.Popen(
                    argv, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
                )
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode not in ok_codes:
                    err.seek(0)
                    raise RuntimeError(
                        f"{' '.join(argv)} exited {proc.returncode}: {err.read().decode()[-2000:]}"
                    )
            if i:
                out[name].append((wall, usage.ru_utime + usage.ru_stime))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float  # the kernel's high-water mark for this process alone
    samples: list[tuple[float, float]]  # (seconds since start, RSS MB)


def run_measured(argv: list[str], *, env: dict[str, str], sample_every: float = 0.2) -> Measured:
    """Run ``argv`` to completion; its own peak RSS comes from wait4 (not RUSAGE_CHILDREN,
    which would report the largest of all children, the sandbox included)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        samples: list[tuple[float, float]] = []
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _vm_rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - t0, rss))
            time.sleep(sample_every)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, out.read(), err.read(), wall, usage.ru_maxrss / 1024, samples)


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a (running) process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values) - idle) / tick, sum(values) / tick


def _vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
