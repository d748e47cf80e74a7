"""The warehouse where synced rows land, chosen by URL.

``open_warehouse("postgresql://user:pass@host/db")`` (production, Supabase) or
``open_warehouse("sqlite:////abs/path/warehouse.db")`` (the embedded default). Both
backends implement ``Warehouse`` from ``clearlift_cli.warehouse.base``.
"""

from __future__ import annotations

from clearlift_cli.errors import ConfigError
from clearlift_cli.pgconnect import PgLimits
from clearlift_cli.redact import mask_url
from clearlift_cli.warehouse.base import RowOwner, Warehouse, WarehouseWriter

__all__ = ["RowOwner", "Warehouse", "WarehouseWriter", "check_url", "open_warehouse"]


def open_warehouse(url: str, *, pg_limits: PgLimits | None = None) -> Warehouse:
    """Open (and check that it can be reached) the warehouse at ``url``.

    ``postgresql://`` / ``postgres://``: any libpq URL. ``sqlite:///relative.db`` or
    ``sqlite:////absolute.db``: a file, created with its folder if missing. Raises
    ``ConfigError`` for any other URL and ``WarehouseError`` (password masked) when the
    warehouse cannot be reached or opened. Call ``init_schema()`` before the first write.
    PostgreSQL connections get ``pg_limits`` (see ``clearlift_cli.pgconnect``)."""
    scheme = check_url(url)
    if scheme == "postgres":
        from clearlift_cli.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(url, limits=pg_limits)
    from clearlift_cli.warehouse.sqlite import SqliteWarehouse, path_from_url

    return SqliteWarehouse(path_from_url(url), url=url)


def check_url(url: str) -> str:
    """``"postgres"`` or ``"sqlite"`` for a warehouse URL clearlift can open, without
    touching anything; ``ConfigError`` (password masked) for any other."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    if scheme == "sqlite":
        from clearlift_cli.warehouse.sqlite import path_from_url

        path_from_url(url)
        return "sqlite"
    raise ConfigError(
        f"unsupported warehouse URL {mask_url(url)!r}: use postgresql://... or sqlite:///path",
        hint="set CLEARLIFT_WAREHOUSE_URL",
    )
