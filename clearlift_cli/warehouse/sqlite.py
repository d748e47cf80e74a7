"""The embedded warehouse: one SQLite file, in WAL mode so readers never wait for a job.

Money is INTEGER, conversions are the exact decimal as TEXT, dates 'YYYY-MM-DD' TEXT and
timestamps fixed-width ISO text in UTC ('2024-01-01T03:00:00.000000Z'), so text order is
time order. Every transaction starts with ``BEGIN IMMEDIATE``: writers queue up on the
busy timeout instead of failing half-way on a lock upgrade.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from clearlift_cli.errors import ConfigError, WarehouseError
from clearlift_cli.redact import mask_url
from clearlift_cli.timeutil import parse_ts
from clearlift_cli.warehouse import schema
from clearlift_cli.warehouse.base import (
    ConnectionPool,
    KeyedBatches,
    RowOwner,
    Warehouse,
    WarehouseWriter,
)
from clearlift_cli.warehouse.schema import (
    SCHEMA_VERSION,
    STRIPE_CHARGES,
    STRIPE_DAILY_REVENUE,
    Table,
)

_TYPES = {
    "text": "TEXT",
    "bigint": "INTEGER",
    "numeric": "TEXT",  # the exact decimal string; REAL would round
    "date": "TEXT",
    "timestamptz": "TEXT",
    "boolean": "INTEGER",
}


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# each takes the Python value of its column kind (Decimal, date, datetime, bool)
_ENCODE: dict[str, Callable[[Any], object]] = {
    "numeric": lambda d: format(d, "f"),  # fixed point, never '1E+2'
    "date": lambda d: d.isoformat(),
    "timestamptz": _ts,
    "boolean": int,
}

_DECODE: dict[str, Callable[[Any], object]] = {
    "numeric": Decimal,
    "date": date.fromisoformat,
    "timestamptz": parse_ts,
    "boolean": bool,
}


def _q(name: str) -> str:
    """Quote an identifier; names come from ``schema``, never from input."""
    return '"' + name.replace('"', '""') + '"'


def _cols(names: Iterable[str]) -> str:
    return ", ".join(_q(n) for n in names)


def _on_conflict(tbl: Table) -> str:
    """``ON CONFLICT ... DO UPDATE`` that rewrites a row only when a value changed."""
    updates = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in tbl.value_columns)
    compared = tbl.compared_columns
    old = ", ".join(f"{_q(tbl.name)}.{_q(c)}" for c in compared)
    new = ", ".join(f"excluded.{_q(c)}" for c in compared)
    return f"ON CONFLICT ({_cols(tbl.key)}) DO UPDATE SET {updates} WHERE ({old}) IS NOT ({new})"


def _upsert_sql(tbl: Table) -> str:
    names = tbl.column_names
    return (
        f"INSERT INTO {_q(tbl.name)} ({_cols(names)}) VALUES ({', '.join('?' * len(names))}) "
        + _on_conflict(tbl)
    )


_FENCE_SQL = (
    f"INSERT INTO {_q(schema.FENCE_TABLE)} (connection_id, write_seq, updated_at) "
    "VALUES (?, ?, ?) ON CONFLICT (connection_id) DO UPDATE SET "
    "write_seq = excluded.write_seq, updated_at = excluded.updated_at "
    f"WHERE excluded.write_seq >= {_q(schema.FENCE_TABLE)}.write_seq RETURNING write_seq"
)


def _row_encoder(tbl: Table) -> Callable[[tuple], list]:
    """A function turning rows of ``tbl`` into SQLite values. Only the columns whose kind
    needs converting are touched, and a column holding the very same object as in the
    previous row (every row of one upsert shares its last_synced_at) reuses its value."""
    steps = [(i, _ENCODE[c.kind]) for i, c in enumerate(tbl.columns) if c.kind in _ENCODE]
    last: dict[int, tuple[object, object]] = {}

    def encode(row: tuple) -> list:
        out = list(row)
        for i, convert in steps:
            value = out[i]
            if value is None:
                continue
            seen = last.get(i)
            if seen is not None and seen[0] is value:
                out[i] = seen[1]
            else:
                out[i] = convert(value)
                last[i] = (value, out[i])
        return out

    return encode


def _sqlite_error(action: str, exc: BaseException, where: str) -> WarehouseError:
    return WarehouseError(f"warehouse {where}: {action} failed: {exc}")


class SqliteWriter(WarehouseWriter):
    def __init__(self, conn: sqlite3.Connection, where: str, write_seq: int | None = None):
        super().__init__(write_seq)
        self._conn = conn
        self._where = where
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this warehouse transaction has ended")

    def _take_fence(self, connection_id: str, write_seq: int) -> bool:
        self._check_open()
        try:
            row = self._conn.execute(
                _FENCE_SQL, (connection_id, write_seq, _ts(datetime.now(UTC)))
            ).fetchone()
        except sqlite3.Error as exc:
            raise _sqlite_error("taking the connection's write fence", exc, self._where) from exc
        return row is not None

    def _upsert(self, tbl: Table, owner: RowOwner, rows: Iterable[tuple]) -> int:
        self._check_open()
        statement = _upsert_sql(tbl)
        encode = _row_encoder(tbl)
        batches = KeyedBatches(tbl, rows)
        for chunk, _repeats in batches:
            try:
                self._conn.executemany(statement, map(encode, chunk))
            except (sqlite3.Error, OverflowError) as exc:
                raise _sqlite_error(f"writing {tbl.name}", exc, self._where) from exc
        return batches.count

    def _rebuild_daily_revenue(self, owner: RowOwner, since: date, until: date, synced_at: datetime) -> int:
        self._check_open()
        params = {
            "org": owner.organization_id,
            "conn": owner.connection_id,
            "account": owner.account_id,
            "first": since.isoformat(),
            "last": until.isoformat(),
            "synced": _ts(synced_at),
        }
        rev, ch = _q(STRIPE_DAILY_REVENUE.name), _q(STRIPE_CHARGES.name)
        try:
            # Days left without a counted charge lose their row; the others are upserted,
            # rewritten only when a sum changed.
            self._conn.execute(
                f"DELETE FROM {rev} WHERE organization_id = :org AND account_id = :account "
                "AND revenue_date BETWEEN :first AND :last AND NOT EXISTS (SELECT 1 FROM "
                f"{ch} AS c WHERE c.organization_id = {rev}.organization_id AND c.account_id = "
                f"{rev}.account_id AND c.charge_date = {rev}.revenue_date AND c.currency = "
                f"{rev}.currency AND c.paid = 1 AND c.status = 'succeeded' "
                "AND coalesce(c.captured, 1) = 1)",
                params,
            )
            self._conn.execute(
                f"INSERT INTO {rev} ({_cols(STRIPE_DAILY_REVENUE.column_names)}) "
                "SELECT :org, :conn, :account, charge_date, currency, "
                "SUM(coalesce(amount_captured_minor, amount_minor)), SUM(amount_refunded_minor), "
                "SUM(coalesce(amount_captured_minor, amount_minor)) - SUM(amount_refunded_minor), "
                f"COUNT(*), :synced FROM {ch} "
                "WHERE organization_id = :org AND account_id = :account "
                "AND charge_date BETWEEN :first AND :last AND paid = 1 AND status = 'succeeded' "
                "AND coalesce(captured, 1) = 1 "
                "GROUP BY charge_date, currency " + _on_conflict(STRIPE_DAILY_REVENUE),
                params,
            )
            (n,) = self._conn.execute(
                f"SELECT COUNT(*) FROM {rev} WHERE organization_id = :org "
                "AND account_id = :account AND revenue_date BETWEEN :first AND :last",
                params,
            ).fetchone()
        except sqlite3.Error as exc:
            raise _sqlite_error("rebuilding stripe_daily_revenue", exc, self._where) from exc
        return int(n)

    def _stored_charge_dates(self, owner: RowOwner, charge_ids: list[str]) -> dict[str, date]:
        self._check_open()
        out: dict[str, date] = {}
        for start in range(0, len(charge_ids), 500):  # well under SQLite's variable limit
            part = charge_ids[start : start + 500]
            try:
                rows = self._conn.execute(
                    f"SELECT charge_id, charge_date FROM {_q(STRIPE_CHARGES.name)} "
                    "WHERE organization_id = ? AND account_id = ? "
                    f"AND charge_id IN ({', '.join('?' * len(part))})",
                    (owner.organization_id, owner.account_id, *part),
                ).fetchall()
            except sqlite3.Error as exc:
                raise _sqlite_error("reading stripe_charges", exc, self._where) from exc
            out.update((charge_id, date.fromisoformat(day)) for charge_id, day in rows)
        return out


class SqliteWarehouse(Warehouse):
    """A warehouse in the SQLite file at ``path`` (created, with its folder, if missing)."""

    backend = "sqlite"
    single_writer = True

    def __init__(self, path: str | Path, *, url: str | None = None, busy_timeout: float = 30.0):
        self.path = Path(path).expanduser()
        self.url_for_display = mask_url(url or f"sqlite:///{self.path}")
        self._busy_timeout = busy_timeout
        self._pool: ConnectionPool[sqlite3.Connection] = ConnectionPool(self._connect, lambda c: c.close())
        self._schema_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 before SQLite opens it (SQLite gives -wal and -shm the same mode):
            # spend figures and Stripe customer ids are nobody else's business.
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise WarehouseError(
                f"cannot create the warehouse {self.url_for_display}: {exc.strerror}"
            ) from None
        self._pool.release(self._connect())  # fail now, not in the middle of a job

    def _connect(self) -> sqlite3.Connection:
        try:
            # check_same_thread off: the pool hands a connection to one thread at a time.
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _sqlite_error("opening", exc, self.url_for_display) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise _sqlite_error("opening", exc, self.url_for_display) from None
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn, _ = self._pool.acquire()
        try:
            yield conn
        finally:
            self._pool.release(conn, reusable=not conn.in_transaction)

    @contextmanager
    def transaction(self, write_seq: int | None = None) -> Iterator[SqliteWriter]:
        with self._connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _sqlite_error("starting a transaction", exc, self.url_for_display) from None
            writer = SqliteWriter(conn, self.url_for_display, write_seq)
            try:
                yield writer
            except BaseException:
                _rollback(conn)
                raise
            finally:
                writer.closed = True
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise _sqlite_error("committing", exc, self.url_for_display) from None

    # --- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        with self._connection() as conn:
            return _read_version(conn, self.url_for_display)

    def init_schema(self, *, read_policy: str | None = None) -> None:
        """``read_policy`` is PostgreSQL's (row level security); a SQLite file has none."""
        with self._schema_lock, self._connection() as conn:
            if _read_version(conn, self.url_for_display) == SCHEMA_VERSION:
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    _migrate(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise _sqlite_error("creating the schema", exc, self.url_for_display) from None

    # --- reads ----------------------------------------------------------------------------

    def count_rows(self, table: str, organization_id: str | None = None) -> int:
        tbl = schema.table(table)
        where, params = _filters(organization_id=organization_id)
        with self._connection() as conn:
            try:
                (n,) = conn.execute(f"SELECT COUNT(*) FROM {_q(tbl.name)}{where}", params).fetchone()
            except sqlite3.Error as exc:
                raise _sqlite_error(f"counting {tbl.name}", exc, self.url_for_display) from None
        return int(n)

    def fetch_rows(
        self,
        table: str,
        *,
        organization_id: str | None = None,
        account_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        tbl = schema.table(table)
        where, params = _filters(organization_id=organization_id, account_id=account_id)
        statement = f"SELECT {_cols(tbl.column_names)} FROM {_q(tbl.name)}{where} ORDER BY {_cols(tbl.key)}"
        if limit is not None:
            statement += " LIMIT ?"
            params.append(int(limit))
        decoders = [_DECODE.get(c.kind) for c in tbl.columns]
        names = tbl.column_names
        with self._connection() as conn:
            try:
                raw = conn.execute(statement, params).fetchall()
            except sqlite3.Error as exc:
                raise _sqlite_error(f"reading {tbl.name}", exc, self.url_for_display) from None
        return [
            {n: (v if f is None or v is None else f(v)) for n, f, v in zip(names, decoders, row, strict=True)}
            for row in raw
        ]

    def close(self) -> None:
        self._pool.close()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # nothing more to undo; the pool drops a connection still in a transaction
            pass


def _filters(**values: str | None) -> tuple[str, list]:
    present = [(k, v) for k, v in values.items() if v is not None]
    if not present:
        return "", []
    return " WHERE " + " AND ".join(f"{_q(k)} = ?" for k, _ in present), [v for _, v in present]


def _read_version(conn: sqlite3.Connection, where: str) -> int | None:
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (schema.META_TABLE,)
        ).fetchone()
        if not exists:
            return None
        row = conn.execute(f"SELECT schema_version FROM {_q(schema.META_TABLE)} WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        raise _sqlite_error("reading the schema version", exc, where) from None
    return None if row is None else int(row[0])


def _migrate(conn: sqlite3.Connection) -> None:
    meta = _q(schema.META_TABLE)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {meta} (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "schema_version INTEGER NOT NULL, updated_at TEXT NOT NULL)"
    )
    row = conn.execute(f"SELECT schema_version FROM {meta} WHERE id = 1").fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise WarehouseError(
            f"the warehouse schema is version {row[0]}, newer than this clearlift understands "
            f"({SCHEMA_VERSION}): upgrade clearlift"
        )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {_q(schema.FENCE_TABLE)} (connection_id TEXT PRIMARY KEY, "
        "write_seq INTEGER NOT NULL, updated_at TEXT NOT NULL)"
    )
    for tbl in schema.TABLES.values():
        columns = ", ".join(
            f"{_q(c.name)} {_TYPES[c.kind]}{' NOT NULL' if c.not_null else ''}" for c in tbl.columns
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_q(tbl.name)} ({columns}, "
            f"PRIMARY KEY ({_cols(tbl.key)})) WITHOUT ROWID"
        )
        present = {r[1] for r in conn.execute(f"PRAGMA table_info({_q(tbl.name)})")}
        for c in tbl.columns:
            if c.name not in present:
                # Added columns stay nullable: existing rows have no value for them.
                conn.execute(f"ALTER TABLE {_q(tbl.name)} ADD COLUMN {_q(c.name)} {_TYPES[c.kind]}")
        for index in tbl.indexes:
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_q(index.name)} ON {_q(tbl.name)} ({_cols(index.columns)})"
            )
    conn.execute(
        f"INSERT INTO {meta} (id, schema_version, updated_at) VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET schema_version = excluded.schema_version, "
        "updated_at = excluded.updated_at",
        (SCHEMA_VERSION, _ts(datetime.now(UTC))),
    )


def path_from_url(url: str) -> str:
    """The file of a ``sqlite:///path`` URL: ``sqlite:///rel/w.db`` is relative,
    ``sqlite:////abs/w.db`` absolute (as in SQLAlchemy)."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or len(rest) == 1:
        raise ConfigError(
            f"warehouse URL {mask_url(url)!r} names no file: use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    path = rest[1:].split("?", 1)[0]
    if path == ":memory:":
        raise ConfigError("the warehouse must be a file (sqlite:///:memory: is not shared between jobs)")
    return path
