"""The store: ClearLift's tables and clearlift's control plane, as operations.

- ``scheduling.Store`` (on ``operations.BaseStore``): every read and write, by name.
- ``engine.Engine`` with siblings ``sqlite.SqliteEngine`` and ``postgres.PgEngine``: the SQL
  databases (connections: per thread on PostgreSQL, one shared in turns on SQLite;
  transactions, schema migration).
- ``tables``: where ClearLift's tables live — beside the control plane (``SharedTables``) or
  in the live D1 over its REST API (``d1.D1Tables``).
- ``schema``: the tables, clearlift's declared once for every backend.
- ``queue.Queue``: the durable job queue on the control plane.

``CLEARLIFT_DB`` picks the backend: a SQLite path (or ``sqlite:///path``), ``postgresql://…``
(many hosts), or ``d1://ACCOUNT_ID/DATABASE_ID`` (the live D1; clearlift's own tables then
live in ``CLEARLIFT_CONTROL_DB``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from clearlift_cli.errors import ConfigError, StoreError
from clearlift_cli.pgconnect import PgLimits
from clearlift_cli.timeutil import SYSTEM_CLOCK, Clock

from .engine import Engine, IntegrityError
from .operations import RUNS_KEPT_SECONDS, new_job_id, with_records
from .scheduling import Store
from .schema import CONNECTION_COLUMNS, SCHEMA_VERSION, STATUS_COLUMNS

# `scheme://` at the start of a store setting: a URL, never a file path.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SUPPORTED_STORE_URLS = "a SQLite file path, sqlite:///path, postgresql://… (many hosts) or d1://ACCOUNT_ID/DATABASE_ID (the live D1)"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def is_d1(url: str) -> bool:
    return url.startswith("d1://")


def sqlite_path(url: str, setting: str = "CLEARLIFT_DB") -> str:
    """The file a SQLite store setting names (a path, or ``sqlite:///path`` as SQLAlchemy
    spells it, four slashes for an absolute path). ConfigError for any other URL scheme:
    ``mysql://…`` must not become a directory named ``mysql:``."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    m = _URL_SCHEME.match(url)
    if m or url.lower().startswith("sqlite:"):
        scheme = m.group(1) if m else "sqlite"
        raise ConfigError(
            f"unsupported store URL {_masked(url, scheme)!r}: {setting} must be {SUPPORTED_STORE_URLS}",
            hint="set it to one of those (sqlite:///path has three slashes, four for an absolute path)",
        )
    return url


def _masked(url: str, scheme: str) -> str:
    """``url`` with its password masked; only the scheme when it does not parse."""
    from clearlift_cli.redact import mask_url

    return mask_url(url) if _port_parses(url) else f"{scheme}://…"


def _port_parses(url: str) -> bool:
    """Whether ``url``'s port, if any, is a number urllib accepts (mask_url needs it to)."""
    try:
        port = urlsplit(url).port
    except ValueError:
        return False
    return port is None or 0 <= port <= 65535


def open_engine(
    url: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    create: bool = False,
    pg_limits: PgLimits | None = None,
    setting: str = "CLEARLIFT_DB",
) -> Engine:
    """The SQL database at ``url`` (a SQLite path or ``postgresql://…``)."""
    if is_postgres(url):
        from .postgres import PgEngine

        return PgEngine(url, clock=clock, limits=pg_limits)
    if is_d1(url):
        raise ConfigError(
            f"{setting} cannot be a D1 database ({_masked(url, 'd1')}): clearlift's own tables never go to D1",
            hint="set CLEARLIFT_CONTROL_DB to a SQLite path or postgresql://…",
        )
    path = sqlite_path(url, setting)
    from .sqlite import SqliteEngine

    try:
        return SqliteEngine(path, clock=clock, create=create)
    except OSError as exc:
        raise StoreError(f"store {path} cannot be created: {exc.strerror}") from None


def open_store(
    url: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    create: bool = False,
    pg_limits: PgLimits | None = None,
    settings: Any = None,
) -> Store:
    """Open the store at ``url``: a file path, ``sqlite:///path``, ``postgresql://…``
    (whose connections get ``pg_limits``), or ``d1://ACCOUNT_ID/DATABASE_ID`` (needs
    ``settings`` for the Cloudflare token, ``CLEARLIFT_D1_URL`` and ``CLEARLIFT_CONTROL_DB``).
    Any other URL scheme is a ConfigError (exit 3), never a file path."""
    if not is_d1(url):
        return Store(open_engine(url, clock=clock, create=create, pg_limits=pg_limits))
    if settings is None:
        raise ConfigError("a d1:// store needs its settings (CLOUDFLARE_API_TOKEN, CLEARLIFT_CONTROL_DB)")
    from clearlift_cli.d1 import D1Client

    from .d1 import D1Tables

    client = D1Client.from_settings(settings, url, clock=clock)
    engine = open_engine(
        settings.control_db, clock=clock, create=create, pg_limits=pg_limits, setting="CLEARLIFT_CONTROL_DB"
    )
    return Store(engine, D1Tables(client))


def open_store_for(settings: Any, *, clock: Clock = SYSTEM_CLOCK, create: bool = False) -> Store:
    """The store ``settings`` name (CLEARLIFT_DB, and CLEARLIFT_CONTROL_DB beside a D1)."""
    return open_store(
        settings.db, clock=clock, create=create, pg_limits=settings.pg_limits(), settings=settings
    )


__all__ = [
    "CONNECTION_COLUMNS",
    "IntegrityError",
    "RUNS_KEPT_SECONDS",
    "SCHEMA_VERSION",
    "STATUS_COLUMNS",
    "SUPPORTED_STORE_URLS",
    "Store",
    "is_d1",
    "is_postgres",
    "new_job_id",
    "open_engine",
    "open_store",
    "open_store_for",
    "sqlite_path",
    "with_records",
]
