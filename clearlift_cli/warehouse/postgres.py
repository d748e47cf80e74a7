"""The production warehouse: PostgreSQL (Supabase), through psycopg 3.

Tables are named without a schema, so the URL's ``search_path`` decides where they live.
Upserts stream each chunk of rows with COPY into a temporary staging table (dropped at
commit) and merge it with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``. Prepared
statements are off so that transaction-mode poolers (Supabase's port 6543) work.
``open_warehouse`` imports this module (and so psycopg) only for a PostgreSQL URL: the CLI
starts faster without it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Callable, Iterable, Iterator, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from clearlift_cli import redact
from clearlift_cli.redact import mask_url, scrub, unencoded_userinfo, unquote_error, url_passwords
from clearlift_cli.errors import ConfigError, WarehouseError
from clearlift_cli.platforms.base import Account
from clearlift_cli.warehouse import schema
from clearlift_cli.warehouse.base import (
    ConnectionPool,
    RowOwner,
    Warehouse,
    WarehouseWriter,
    chunked,
)
from clearlift_cli.warehouse.schema import (
    SCHEMA_VERSION,
    STRIPE_CHARGES,
    STRIPE_DAILY_REVENUE,
    Table,
)

_TYPES = {
    "text": "TEXT",
    "bigint": "BIGINT",
    "numeric": "NUMERIC",
    "date": "DATE",
    "timestamptz": "TIMESTAMPTZ",
    "boolean": "BOOLEAN",
}

# Applied unless the URL sets them: libpq would otherwise wait forever for a dead host,
# and notice a silently dropped connection only after two hours.
_CONNECT_DEFAULTS = {
    "connect_timeout": "10",
    "application_name": "clearlift",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

# Serialises concurrent `clearlift init` runs (an arbitrary constant: "clearlift" in ASCII).
_SCHEMA_LOCK_KEY = 0x636C6561726C6966

T = TypeVar("T")


@dataclass(frozen=True)
class _Statements:
    create_stage: sql.Composed
    copy: sql.Composed
    upsert: sql.Composed
    truncate: sql.Composed


@lru_cache(maxsize=None)
def _statements(table_name: str) -> _Statements:
    tbl = schema.table(table_name)
    target = sql.Identifier(tbl.name)
    # Not the target's own name: pg_temp comes first in search_path and would shadow it.
    stage = sql.Identifier(f"clearlift_stage_{tbl.name}")
    cols = sql.SQL(", ").join(map(sql.Identifier, tbl.column_names))
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in tbl.value_columns
    )
    return _Statements(
        create_stage=sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(stage, target),
        copy=sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols),
        upsert=sql.SQL(
            "INSERT INTO {target} AS existing ({cols}) SELECT {cols} FROM {stage} "
            "ON CONFLICT ({key}) DO UPDATE SET {updates} "
            "WHERE EXCLUDED.last_synced_at >= existing.last_synced_at"
        ).format(
            target=target,
            cols=cols,
            stage=stage,
            key=sql.SQL(", ").join(map(sql.Identifier, tbl.key)),
            updates=updates,
        ),
        truncate=sql.SQL("TRUNCATE {}").format(stage),
    )


class PostgresWriter(WarehouseWriter):
    def __init__(self, conn: psycopg.Connection, warehouse: "PostgresWarehouse"):
        self._conn = conn
        self._wh = warehouse
        self._staged: set[str] = set()
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this warehouse transaction has ended")

    def _upsert(self, tbl: Table, rows: Iterable[tuple]) -> int:
        self._check_open()
        q = _statements(tbl.name)
        written = 0
        for chunk in chunked(rows):
            written += len(chunk)
            chunk = schema.dedupe(tbl, chunk)
            try:
                with self._conn.cursor() as cur:
                    if tbl.name not in self._staged:
                        cur.execute(q.create_stage)
                        self._staged.add(tbl.name)
                    with cur.copy(q.copy) as copy:
                        for row in chunk:
                            copy.write_row(row)
                    cur.execute(q.upsert)
                    cur.execute(q.truncate)
            except psycopg.Error as exc:
                raise self._wh._error(f"writing {tbl.name}", exc) from None
        return written

    def rebuild_daily_revenue(
        self, owner: RowOwner, account: Account, since: date, until: date, synced_at: datetime
    ) -> int:
        self._check_open()
        first = schema.a_date(since, "since")
        last = schema.a_date(until, "until")
        synced = schema.utc(synced_at, "synced_at")
        rev = sql.Identifier(STRIPE_DAILY_REVENUE.name)
        try:
            with self._conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE organization_id = %s AND account_id = %s "
                        "AND revenue_date BETWEEN %s AND %s"
                    ).format(rev),
                    (owner.organization_id, owner.account_id, first, last),
                )
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {rev} ({cols}) "
                        "SELECT %s::text, %s::text, %s::text, charge_date, currency, "
                        "SUM(COALESCE(amount_captured_minor, amount_minor)), "
                        "SUM(amount_refunded_minor), "
                        "SUM(COALESCE(amount_captured_minor, amount_minor)) "
                        "- SUM(amount_refunded_minor), COUNT(*), "
                        "%s::timestamptz FROM {charges} "
                        "WHERE organization_id = %s AND account_id = %s "
                        "AND charge_date BETWEEN %s AND %s AND paid AND status = 'succeeded' "
                        "AND COALESCE(captured, TRUE) "
                        "GROUP BY charge_date, currency"
                    ).format(
                        rev=rev,
                        cols=sql.SQL(", ").join(
                            map(sql.Identifier, STRIPE_DAILY_REVENUE.column_names)
                        ),
                        charges=sql.Identifier(STRIPE_CHARGES.name),
                    ),
                    (
                        owner.organization_id,
                        owner.connection_id,
                        owner.account_id,
                        synced,
                        owner.organization_id,
                        owner.account_id,
                        first,
                        last,
                    ),
                )
                return cur.rowcount
        except psycopg.Error as exc:
            raise self._wh._error("rebuilding stripe_daily_revenue", exc) from None

    def _stored_charge_dates(self, owner: RowOwner, charge_ids: list[str]) -> dict[str, date]:
        self._check_open()
        try:
            rows = self._conn.execute(
                sql.SQL(
                    "SELECT charge_id, charge_date FROM {} WHERE organization_id = %s "
                    "AND account_id = %s AND charge_id = ANY(%s)"
                ).format(sql.Identifier(STRIPE_CHARGES.name)),
                (owner.organization_id, owner.account_id, list(charge_ids)),
            ).fetchall()
        except psycopg.Error as exc:
            raise self._wh._error("reading stripe_charges", exc) from None
        return dict(rows)


class PostgresWarehouse(Warehouse):
    """A warehouse in the PostgreSQL database of a libpq URL (``postgresql://...``)."""

    backend = "postgres"

    def __init__(self, url: str):
        self.url_for_display = mask_url(url)
        if unencoded_userinfo(url):
            raise ConfigError(
                f"warehouse URL {self.url_for_display} is not valid: percent-encode the user and password "
                "(@ is %40, / is %2F, ? is %3F, # is %23, a space is %20)"
            )
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            # libpq quotes the offending part, which may be the password or the whole URL
            raise ConfigError(
                f"warehouse URL {self.url_for_display} is not valid: {unquote_error(exc)}"
            ) from None
        # The password as the URL spells it (percent-encoded) and as libpq reads it.
        self._secrets = tuple(
            s for s in dict.fromkeys((*url_passwords(url), params.get("password"))) if s
        )
        redact.register(*self._secrets)
        self._url = url
        self._extra = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in params}
        self._pool: ConnectionPool[psycopg.Connection] = ConnectionPool(
            self._connect, lambda c: c.close()
        )
        self._pool.release(self._connect())  # fail now, not in the middle of a job

    # --- connections ----------------------------------------------------------------------

    def _error(self, action: str, exc: BaseException) -> WarehouseError:
        return WarehouseError(
            f"warehouse {self.url_for_display}: {action} failed: {scrub(exc, *self._secrets)}"
        )

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._url, prepare_threshold=None, **self._extra)
        except psycopg.Error as exc:
            raise self._error("connecting", exc) from None

    def _checkout(self) -> psycopg.Connection:
        """A connection ready for a new transaction: an idle one that still answers, or a
        new one (the server may have restarted since the idle one was last used)."""
        conn, fresh = self._pool.acquire()
        if fresh:
            return conn
        try:
            conn.execute("SELECT 1")
            return conn
        except psycopg.Error:
            self._pool.discard(conn)
            return self._connect()

    def _checkin(self, conn: psycopg.Connection) -> None:
        reusable = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        self._pool.release(conn, reusable=reusable)

    @staticmethod
    def _rollback(conn: psycopg.Connection) -> None:
        try:
            conn.rollback()
        except psycopg.Error:  # the connection is gone; the server rolled back already
            pass

    def _read(self, action: str, work: Callable[[psycopg.Connection], T]) -> T:
        conn = self._checkout()
        try:
            try:
                return work(conn)
            except psycopg.Error as exc:
                raise self._error(action, exc) from None
            finally:
                self._rollback(conn)
        finally:
            self._checkin(conn)

    @contextmanager
    def transaction(self) -> Iterator[PostgresWriter]:
        conn = self._checkout()
        try:
            writer = PostgresWriter(conn, self)
            try:
                yield writer
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, psycopg.Error):
                    raise self._error("writing", exc) from None
                raise
            finally:
                writer.closed = True
            try:
                conn.commit()
            except psycopg.Error as exc:
                self._rollback(conn)
                raise self._error("committing", exc) from None
        finally:
            self._checkin(conn)

    def close(self) -> None:
        self._pool.close()

    # --- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        return self._read("reading the schema version", _read_version)

    def init_schema(self) -> None:
        conn = self._checkout()
        try:
            try:
                if _read_version(conn) == SCHEMA_VERSION:
                    conn.rollback()
                    return
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                _migrate(conn)
                conn.commit()
            except psycopg.Error as exc:
                self._rollback(conn)
                raise self._error("creating the schema", exc) from None
            except BaseException:
                self._rollback(conn)
                raise
        finally:
            self._checkin(conn)

    # --- reads ----------------------------------------------------------------------------

    def count_rows(self, table: str, organization_id: str | None = None) -> int:
        tbl = schema.table(table)
        where, params = _filters(organization_id=organization_id)
        statement = sql.SQL("SELECT COUNT(*) FROM {}{}").format(sql.Identifier(tbl.name), where)

        def work(conn: psycopg.Connection) -> int:
            return int(conn.execute(statement, params).fetchone()[0])

        return self._read(f"counting {tbl.name}", work)

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
        # Byte order for text keys, like SQLite, whatever the database's collation.
        order = sql.SQL(", ").join(
            (
                sql.SQL('{} COLLATE "C"').format(sql.Identifier(k))
                if tbl.kind_of(k) == "text"
                else sql.Identifier(k)
            )
            for k in tbl.key
        )
        statement = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, tbl.column_names)),
            sql.Identifier(tbl.name),
            where,
            order,
        )
        if limit is not None:
            statement = sql.SQL("{} LIMIT %s").format(statement)
            params.append(int(limit))
        names = tbl.column_names
        kinds = [c.kind for c in tbl.columns]

        def work(conn: psycopg.Connection) -> list[dict]:
            return [
                {n: _to_utc(v) if k == "timestamptz" else v for n, k, v in zip(names, kinds, row)}
                for row in conn.execute(statement, params).fetchall()
            ]

        return self._read(f"reading {tbl.name}", work)


def _to_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(timezone.utc)


def _filters(**values: str | None) -> tuple[sql.Composable, list]:
    present = [(k, v) for k, v in values.items() if v is not None]
    if not present:
        return sql.SQL(""), []
    clause = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k, _ in present)
    return sql.SQL(" WHERE {}").format(clause), [v for _, v in present]


def _read_version(conn: psycopg.Connection) -> int | None:
    (exists,) = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (schema.META_TABLE,)).fetchone()
    if not exists:
        return None
    row = conn.execute(
        sql.SQL("SELECT schema_version FROM {} WHERE id = 1").format(
            sql.Identifier(schema.META_TABLE)
        )
    ).fetchone()
    return None if row is None else int(row[0])


def _migrate(conn: psycopg.Connection) -> None:
    meta = sql.Identifier(schema.META_TABLE)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY CHECK (id = 1), "
            "schema_version INTEGER NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
        ).format(meta)
    )
    row = conn.execute(
        sql.SQL("SELECT schema_version FROM {} WHERE id = 1").format(meta)
    ).fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise WarehouseError(
            f"the warehouse schema is version {row[0]}, newer than this clearlift understands "
            f"({SCHEMA_VERSION}): upgrade clearlift"
        )
    for tbl in schema.TABLES.values():
        name = sql.Identifier(tbl.name)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name),
                sql.SQL(_TYPES[c.kind]),
                sql.SQL(" NOT NULL" if c.not_null else ""),
            )
            for c in tbl.columns
        )
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                name, columns, sql.SQL(", ").join(map(sql.Identifier, tbl.key))
            )
        )
        present = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (tbl.name,),
            )
        }
        for c in tbl.columns:
            if c.name not in present:
                # Added columns stay nullable: existing rows have no value for them.
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        name, sql.Identifier(c.name), sql.SQL(_TYPES[c.kind])
                    )
                )
        for index in tbl.indexes:
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(index.name),
                    name,
                    sql.SQL(", ").join(map(sql.Identifier, index.columns)),
                )
            )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, schema_version, updated_at) VALUES (1, %s, now()) "
            "ON CONFLICT (id) DO UPDATE SET schema_version = EXCLUDED.schema_version, "
            "updated_at = EXCLUDED.updated_at"
        ).format(meta),
        (SCHEMA_VERSION,),
    )
