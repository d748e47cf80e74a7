"""The production warehouse: PostgreSQL (Supabase), through psycopg 3.

Tables are named without a schema, so the URL's ``search_path`` decides where they live.
Upserts stream each chunk of rows with COPY into a temporary staging table (dropped at
commit) and merge it with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``. Prepared
statements are off so that transaction-mode poolers (Supabase's port 6543) work.
``open_warehouse`` imports this module (and so psycopg) only for a PostgreSQL URL: the CLI
starts faster without it.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from clearlift_cli import pgconnect, redact
from clearlift_cli.errors import ConfigError, WarehouseError
from clearlift_cli.pgconnect import PgLimits
from clearlift_cli.redact import mask_url, scrub, unencoded_userinfo, unquote_error, url_passwords
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

# The types COPY ... (FORMAT BINARY) is told, per column kind.
_BINARY_TYPES = {
    "text": "text",
    "bigint": "int8",
    "numeric": "numeric",
    "date": "date",
    "timestamptz": "timestamptz",
    "boolean": "bool",
}

_TYPES = {
    "text": "TEXT",
    "bigint": "BIGINT",
    "numeric": "NUMERIC",
    "date": "DATE",
    "timestamptz": "TIMESTAMPTZ",
    "boolean": "BOOLEAN",
}

# Supabase's roles for the public API: the anon key, and a signed-in user's JWT.
READ_ROLES = ("anon", "authenticated")
READ_POLICY_NAME = "clearlift_read"

log = logging.getLogger("clearlift.warehouse")

# Serialises concurrent `clearlift init` runs (an arbitrary constant: "clearlift" in ASCII).
_SCHEMA_LOCK_KEY = 0x636C6561726C6966

T = TypeVar("T")


def _rendered(statement: sql.Composable) -> sql.SQL:
    """``statement`` composed once, for good: psycopg would compose a ``Composed`` again
    at every execution (a dozen objects per upsert). Our identifiers are plain names,
    quoted as the server would quote them."""
    return sql.SQL(statement.as_string())


@dataclass(frozen=True)
class _Statements:
    create_stage: sql.SQL
    copy_stage: sql.SQL
    copy_target: sql.SQL
    merge: sql.SQL
    truncate: sql.SQL
    probe_owner: sql.SQL
    probe_days: sql.SQL
    # Position in a row of the key's date column (daily metrics), narrowing the probe.
    probe_date: int | None
    binary_types: tuple[str, ...]


def _row(alias: str, columns: Iterable[str]) -> sql.Composed:
    return sql.SQL("({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns)
    )


def _upsert_changed(tbl: Table) -> sql.Composed:
    """``ON CONFLICT ... DO UPDATE`` that rewrites a row only when a value changed."""
    return sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {old} IS DISTINCT FROM {new}").format(
        key=sql.SQL(", ").join(map(sql.Identifier, tbl.key)),
        updates=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in tbl.value_columns
        ),
        old=_row("existing", tbl.compared_columns),
        new=_row("excluded", tbl.compared_columns),
    )


@cache
def _statements(table_name: str) -> _Statements:
    tbl = schema.table(table_name)
    target = sql.Identifier(tbl.name)
    # Not the target's own name: pg_temp comes first in search_path and would shadow it.
    stage = sql.Identifier(f"clearlift_stage_{tbl.name}")
    cols = sql.SQL(", ").join(map(sql.Identifier, tbl.column_names))
    same_key = sql.SQL(" AND ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(k)) for k in tbl.key)
    dates = [i for i, c in enumerate(tbl.columns) if c.name in tbl.key and c.kind == "date"]
    probe_date = dates[0] if dates else None
    owner_rows = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE organization_id = %s AND account_id = %s{})")
    probe_owner = owner_rows.format(target, sql.SQL(""))
    probe_days = owner_rows.format(
        target,
        sql.SQL("")
        if probe_date is None
        else sql.SQL(" AND {} = ANY(%s)").format(sql.Identifier(tbl.columns[probe_date].name)),
    )
    return _Statements(
        create_stage=_rendered(
            sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(stage, target)
        ),
        # Binary: half the client's CPU of text COPY per row, and nothing for the server
        # to parse (measured in benchmarks/warehouse_load.py).
        copy_stage=_rendered(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(stage, cols)),
        copy_target=_rendered(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, cols)),
        # Rows equal to the stored ones are filtered out before the INSERT: ON CONFLICT
        # would lock (and so write to) every conflicting row, even one it then skips.
        merge=_rendered(
            sql.SQL(
                "INSERT INTO {target} AS existing ({cols}) SELECT {s_cols} FROM {stage} AS s "
                "WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {same_key} "
                "AND {t_vals} IS NOT DISTINCT FROM {s_vals}) {upsert}"
            ).format(
                target=target,
                cols=cols,
                s_cols=sql.SQL(", ").join(
                    sql.SQL("s.{}").format(sql.Identifier(c)) for c in tbl.column_names
                ),
                stage=stage,
                same_key=same_key,
                t_vals=_row("t", tbl.compared_columns),
                s_vals=_row("s", tbl.compared_columns),
                upsert=_upsert_changed(tbl),
            )
        ),
        truncate=_rendered(sql.SQL("TRUNCATE {}").format(stage)),
        probe_owner=_rendered(probe_owner),
        probe_days=_rendered(probe_days),
        probe_date=probe_date,
        binary_types=tuple(_BINARY_TYPES[c.kind] for c in tbl.columns),
    )


@cache
def _revenue_statements() -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    """Delete revenue days left without charges; upsert the sums that changed; count."""
    rev, charges = sql.Identifier(STRIPE_DAILY_REVENUE.name), sql.Identifier(STRIPE_CHARGES.name)
    delete = sql.SQL(
        "DELETE FROM {rev} AS r WHERE r.organization_id = %(org)s AND r.account_id = %(account)s "
        "AND r.revenue_date BETWEEN %(first)s AND %(last)s AND NOT EXISTS (SELECT 1 FROM "
        "{charges} AS c WHERE c.organization_id = r.organization_id AND c.account_id = "
        "r.account_id AND c.charge_date = r.revenue_date AND c.currency = r.currency AND "
        "c.paid AND c.status = 'succeeded' AND COALESCE(c.captured, TRUE))"
    ).format(rev=rev, charges=charges)
    upsert = sql.SQL(
        "INSERT INTO {rev} AS existing ({cols}) "
        "SELECT %(org)s::text, %(conn)s::text, %(account)s::text, charge_date, currency, "
        "SUM(COALESCE(amount_captured_minor, amount_minor)), SUM(amount_refunded_minor), "
        "SUM(COALESCE(amount_captured_minor, amount_minor)) - SUM(amount_refunded_minor), "
        "COUNT(*), %(synced)s::timestamptz "
        "FROM {charges} WHERE organization_id = %(org)s AND account_id = %(account)s "
        "AND charge_date BETWEEN %(first)s AND %(last)s AND paid AND status = 'succeeded' "
        "AND COALESCE(captured, TRUE) GROUP BY charge_date, currency {upsert}"
    ).format(
        rev=rev,
        cols=sql.SQL(", ").join(map(sql.Identifier, STRIPE_DAILY_REVENUE.column_names)),
        charges=charges,
        upsert=_upsert_changed(STRIPE_DAILY_REVENUE),
    )
    count = sql.SQL(
        "SELECT COUNT(*) FROM {rev} WHERE organization_id = %(org)s AND account_id = %(account)s "
        "AND revenue_date BETWEEN %(first)s AND %(last)s"
    ).format(rev=rev)
    return delete, upsert, count


_FENCE = _rendered(
    sql.SQL(
        "INSERT INTO {fence} AS f (connection_id, write_seq, updated_at) VALUES (%s, %s, now()) "
        "ON CONFLICT (connection_id) DO UPDATE SET write_seq = EXCLUDED.write_seq, "
        "updated_at = EXCLUDED.updated_at WHERE EXCLUDED.write_seq >= f.write_seq "
        "RETURNING write_seq"
    ).format(fence=sql.Identifier(schema.FENCE_TABLE))
)


# What _all_new found about the owner as a whole (kept in the same set as the empty days).
_OWNER, _OWNER_STORED = "owner has no rows", "owner has rows"


class _CopyStream:
    """One COPY kept open while consecutive chunks go to the same table; closed (the
    server then finishes storing it) before any other statement on the connection."""

    def __init__(self, cur: psycopg.Cursor, q: _Statements):
        self._cur = cur
        self._types = q.binary_types
        self._statement: sql.SQL | None = None
        self._context: AbstractContextManager[psycopg.Copy] | None = None

    def into(self, statement: sql.SQL) -> Callable[[tuple], None]:
        """The ``write_row`` of a COPY running ``statement``, opened if need be."""
        if self._statement is not statement:
            self.close()
            self._context = self._cur.copy(statement)
            copy = self._context.__enter__()
            copy.set_types(self._types)
            self._statement, self._write = statement, copy.write_row
        return self._write

    def ask(self, query: sql.SQL, params: tuple) -> bool:
        self.close()
        return bool(_scalar(self._cur.execute(query, params)))

    def close(self, exc: BaseException | None = None) -> None:
        context, self._context, self._statement = self._context, None, None
        if context is not None:  # with an exception, the server is told the COPY failed
            context.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def __enter__(self) -> _CopyStream:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None:
            try:
                self.close(exc)
            except psycopg.Error:  # the transaction is failing anyway; keep the first error
                pass


class PostgresWriter(WarehouseWriter):
    def __init__(self, conn: psycopg.Connection, warehouse: PostgresWarehouse, write_seq: int | None = None):
        super().__init__(write_seq)
        self._conn = conn
        self._wh = warehouse
        self._staged: set[str] = set()
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this warehouse transaction has ended")

    def _take_fence(self, connection_id: str, write_seq: int) -> bool:
        self._check_open()
        try:
            return self._conn.execute(_FENCE, (connection_id, write_seq)).fetchone() is not None
        except psycopg.Error as exc:
            raise self._wh._error("taking the connection's write fence", exc) from None

    def _upsert(self, tbl: Table, owner: RowOwner, rows: Iterable[tuple]) -> int:
        """New rows go straight into the table with COPY, the fastest path PostgreSQL
        has; rows whose keys may already be stored are staged (COPY into a temporary
        table) and merged once at the end of the call, skipping unchanged rows.
        Consecutive chunks bound for the same place share one COPY, so the server stores
        one chunk while the next is being checked.

        A chunk is new when none of its keys was in an earlier chunk (``KeyedBatches``)
        and the table held no row of the owner (or, for daily rows, none on the chunk's
        days) before this call: ``seen_empty`` keeps what index probes found empty, since
        then written only by this call. The connection's fence keeps other writers of
        these keys out until the transaction ends."""
        self._check_open()
        q = _statements(tbl.name)
        batches = KeyedBatches(tbl, rows)
        staged = False
        seen_empty: set = set()
        try:
            with self._conn.cursor() as cur, _CopyStream(cur, q) as stream:
                for chunk, repeats in batches:
                    if repeats and staged:  # the earlier occurrence lands first
                        stream.close()
                        self._merge(cur, q)
                        staged = False
                    direct = not repeats and self._all_new(stream, q, owner, chunk, seen_empty)
                    if not direct and tbl.name not in self._staged:
                        stream.close()
                        cur.execute(q.create_stage)
                        self._staged.add(tbl.name)
                    write = stream.into(q.copy_target if direct else q.copy_stage)
                    for row in chunk:
                        write(row)
                    staged = staged or not direct
                stream.close()
                if staged:
                    self._merge(cur, q)
        except psycopg.Error as exc:
            raise self._wh._error(f"writing {tbl.name}", exc) from None
        return batches.count

    @staticmethod
    def _all_new(stream: _CopyStream, q: _Statements, owner: RowOwner, chunk: list, seen_empty: set) -> bool:
        """Whether no key of ``chunk`` can be stored already (see ``_upsert``). Probes the
        owner once, then (daily rows) only the days not yet known to be empty."""
        org_account = (owner.organization_id, owner.account_id)
        if _OWNER not in seen_empty and _OWNER_STORED not in seen_empty:
            seen_empty.add(_OWNER_STORED if stream.ask(q.probe_owner, org_account) else _OWNER)
        if _OWNER in seen_empty:
            return True
        if q.probe_date is None:
            return False
        unknown = {row[q.probe_date] for row in chunk} - seen_empty
        if unknown:
            if stream.ask(q.probe_days, (*org_account, sorted(unknown))):
                return False
            seen_empty |= unknown
        return True

    @staticmethod
    def _merge(cur: psycopg.Cursor, q: _Statements) -> None:
        cur.execute(q.merge)
        cur.execute(q.truncate)

    def _rebuild_daily_revenue(self, owner: RowOwner, since: date, until: date, synced_at: datetime) -> int:
        self._check_open()
        delete, upsert, count = _revenue_statements()
        params = {
            "org": owner.organization_id,
            "conn": owner.connection_id,
            "account": owner.account_id,
            "first": since,
            "last": until,
            "synced": synced_at,
        }
        try:
            with self._conn.cursor() as cur:
                cur.execute(delete, params)
                cur.execute(upsert, params)
                return int(_scalar(cur.execute(count, params)))
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

    def __init__(self, url: str, *, limits: PgLimits | None = None):
        self.url_for_display = mask_url(url)
        self._limits = limits
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
            str(s) for s in dict.fromkeys((*url_passwords(url), params.get("password"))) if s
        )
        redact.register(*self._secrets)
        self._url = url
        self._pool: ConnectionPool[psycopg.Connection] = ConnectionPool(self._connect, lambda c: c.close())
        self._pool.release(self._connect())  # fail now, not in the middle of a job

    # --- connections ----------------------------------------------------------------------

    def _error(self, action: str, exc: BaseException) -> WarehouseError:
        return WarehouseError(
            f"warehouse {self.url_for_display}: {action} failed: {scrub(exc, *self._secrets)}"
        )

    def _connect(self) -> psycopg.Connection:
        try:
            # bounded waits and keepalives (see pgconnect), unless the URL sets its own
            return pgconnect.connect(
                self._url, self._limits, application_name="clearlift", prepare_threshold=None
            )
        except psycopg.Error as exc:
            raise self._error("connecting", exc) from None

    def _checkout(self) -> psycopg.Connection:
        """A connection ready for a new transaction: an idle one the server has not closed,
        or a new one (the server may have restarted, or ended the session, since the idle
        one was last used)."""
        conn, fresh = self._pool.acquire()
        if fresh or _quiet(conn):
            return conn
        self._pool.discard(conn)
        return self._connect()

    def _checkin(self, conn: psycopg.Connection) -> None:
        reusable = (
            not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
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
    def transaction(self, write_seq: int | None = None) -> Iterator[PostgresWriter]:
        conn = self._checkout()
        try:
            writer = PostgresWriter(conn, self, write_seq)
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

    def init_schema(
        self, *, read_policy: str | None = None, read_roles: tuple[str, ...] = READ_ROLES
    ) -> None:
        """Also: tables created here get row level security; with ``read_policy`` (a SQL
        condition), a ``clearlift_read`` SELECT policy for those of ``read_roles`` that
        exist. Tables that already exist keep their security and policies as they are."""
        conn = self._checkout()
        try:
            try:
                if _read_version(conn) == SCHEMA_VERSION:
                    conn.rollback()
                    return
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                _migrate(conn, read_policy, read_roles)
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
            return int(_scalar(conn.execute(statement, params)))

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
                {
                    n: _to_utc(v) if k == "timestamptz" else v
                    for n, k, v in zip(names, kinds, row, strict=True)
                }
                for row in conn.execute(statement, params).fetchall()
            ]

        return self._read(f"reading {tbl.name}", work)


def _to_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _filters(**values: str | None) -> tuple[sql.Composable, list]:
    present = [(k, v) for k, v in values.items() if v is not None]
    if not present:
        return sql.SQL(""), []
    clause = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k, _ in present)
    return sql.SQL(" WHERE {}").format(clause), [v for _, v in present]


def _scalar(cur: psycopg.Cursor) -> Any:
    """The first value of a query that always returns one row (COUNT, EXISTS, ...)."""
    row = cur.fetchone()
    assert row is not None, "a one-row query returned no row"
    return row[0]


def _read_version(conn: psycopg.Connection) -> int | None:
    exists = _scalar(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (schema.META_TABLE,)))
    if not exists:
        return None
    row = conn.execute(
        sql.SQL("SELECT schema_version FROM {} WHERE id = 1").format(sql.Identifier(schema.META_TABLE))
    ).fetchone()
    return None if row is None else int(row[0])


def _create_table(conn: psycopg.Connection, name: str, definition: sql.Composable) -> bool:
    """CREATE TABLE IF NOT EXISTS in the current schema; True when it was created here.
    A table clearlift creates gets row level security at once: on Supabase every table
    in ``public`` is served to the anon key, which front ends ship to every visitor."""
    exists = _scalar(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = %s)",
            (name,),
        )
    )
    if exists:
        return False
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, definition))
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(ident))
    return True


def _migrate(
    conn: psycopg.Connection, read_policy: str | None = None, read_roles: tuple[str, ...] = READ_ROLES
) -> None:
    """Bring the warehouse to ``SCHEMA_VERSION``: the meta and fence tables, every data table
    with its missing columns and indexes, read policies on the tables created here; a
    warehouse newer than this clearlift is refused."""
    meta = sql.Identifier(schema.META_TABLE)
    _create_table(
        conn,
        schema.META_TABLE,
        sql.SQL(
            "id INTEGER PRIMARY KEY CHECK (id = 1), schema_version INTEGER NOT NULL, "
            "updated_at TIMESTAMPTZ NOT NULL"
        ),
    )
    row = conn.execute(sql.SQL("SELECT schema_version FROM {} WHERE id = 1").format(meta)).fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise WarehouseError(
            f"the warehouse schema is version {row[0]}, newer than this clearlift understands "
            f"({SCHEMA_VERSION}): upgrade clearlift"
        )
    _create_table(
        conn,
        schema.FENCE_TABLE,
        sql.SQL("connection_id TEXT PRIMARY KEY, write_seq BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL"),
    )
    created = [tbl.name for tbl in schema.TABLES.values() if _migrate_table(conn, tbl)]
    if read_policy and created:
        _create_read_policies(conn, created, read_policy, read_roles)
    _warn_about_open_tables(conn)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, schema_version, updated_at) VALUES (1, %s, now()) "
            "ON CONFLICT (id) DO UPDATE SET schema_version = EXCLUDED.schema_version, "
            "updated_at = EXCLUDED.updated_at"
        ).format(meta),
        (SCHEMA_VERSION,),
    )


def _migrate_table(conn: psycopg.Connection, tbl: schema.Table) -> bool:
    """One data table as the schema describes it: created, else given the columns it lacks
    (nullable: existing rows have no value for them); then its indexes. True when created."""
    name = sql.Identifier(tbl.name)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name),
            sql.SQL(_TYPES[c.kind]),
            sql.SQL(" NOT NULL" if c.not_null else ""),
        )
        for c in tbl.columns
    )
    definition = sql.SQL("{}, PRIMARY KEY ({})").format(
        columns, sql.SQL(", ").join(map(sql.Identifier, tbl.key))
    )
    created = _create_table(conn, tbl.name, definition)
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
    return created


def _create_read_policies(
    conn: psycopg.Connection, tables: list[str], condition: str, roles: tuple[str, ...]
) -> None:
    """A SELECT policy for the roles that exist (Supabase's ``anon`` and ``authenticated``),
    on the tables just created. The condition is the operator's SQL, e.g.
    ``organization_id = (auth.jwt() ->> 'org_id')``."""
    present = [
        r[0]
        for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname", (list(roles),)
        )
    ]
    if not present:
        log.info("no role among %s exists: no read policy created", ", ".join(roles))
        return
    for table in tables:
        conn.execute(
            sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING ({})").format(
                sql.Identifier(READ_POLICY_NAME),
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, present)),
                sql.SQL(condition),  # the operator's own SQL, from their configuration
            )
        )


def _warn_about_open_tables(conn: psycopg.Connection) -> None:
    """One line naming clearlift's tables that exist without row level security (made by
    an older clearlift or by hand): clearlift never changes an existing table's security."""
    names = [schema.META_TABLE, schema.FENCE_TABLE, *schema.TABLES]
    open_tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(%s) "
            "AND NOT c.relrowsecurity ORDER BY c.relname",
            (names,),
        )
    ]
    if open_tables:
        log.warning(
            "warehouse tables without row level security (on Supabase the anon key can read "
            "them): %s; enable it with ALTER TABLE ... ENABLE ROW LEVEL SECURITY",
            ", ".join(open_tables),
        )


def _quiet(conn: psycopg.Connection) -> bool:
    """True for an idle connection the server has sent nothing since its last answer. A
    server that shuts down, restarts or ends the session (``pg_terminate_backend``,
    ``idle_session_timeout``) sends a notice and closes the socket, which is then
    readable; nothing else arrives unasked on a connection that does not ``LISTEN``. This
    costs one ``poll``, not a ``SELECT 1`` round trip per transaction (issue 19). A server
    that vanished without closing (a cut network) is found by the first statement instead,
    and the job is retried."""
    if conn.closed or conn.broken:
        return False
    # poll, not select: select refuses descriptors from 1024 up, and a busy process has them
    # (every idle connection would then look gone and be reopened for every transaction)
    poller = select.poll()
    try:
        poller.register(conn.fileno(), select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
