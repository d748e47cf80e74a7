"""The warehouse interface: where synced campaigns, daily metrics and charges land.

Two backends implement it, chosen by URL (see ``open_warehouse``): PostgreSQL
(production, Supabase) and SQLite (the embedded default). Writes happen inside
``Warehouse.transaction()``: everything one job (or one slice of a backfill) writes
commits together or not at all. Upserts are idempotent on each table's natural key, so a
message delivered twice changes nothing. Money is exact: integers in micros or minor
units, conversions as ``Decimal``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice
from operator import itemgetter
from typing import Generic, TypeVar

from clearlift_cli.errors import StaleWrite
from clearlift_cli.platforms.base import Account, Campaign, Charge, DailyMetric

# Rows per round trip: big enough to amortise it, small enough to keep memory flat.
CHUNK_SIZE = 5_000


@dataclass(frozen=True)
class RowOwner:
    """Who the rows belong to; every warehouse row carries these three values."""

    organization_id: str
    connection_id: str
    account_id: str


class WarehouseWriter(ABC):
    """Writes of one transaction. Each upsert streams ``rows`` (any iterable, of any
    length) in chunks and returns how many distinct keys it wrote (a row repeating a key
    counts once; an unchanged row counts too: it is in the warehouse as the platform sent
    it). A row repeating a key overwrites the stored values, and a row whose values are
    all equal to the stored ones is not rewritten at all (``last_synced_at`` then keeps the
    time the values last changed), so a replay writes nothing.

    Order between writers comes from ``write_seq``, a number the store hands out at each
    claim (later claims get larger numbers), never from a host's clock: the first write of
    a connection's rows in a transaction takes that connection's fence in
    ``clearlift_write_fence`` and raises ``StaleWrite`` if a later claim already holds it.
    The fence is held until the transaction ends, so a connection's writes commit in claim
    order. Without ``write_seq`` (tools, tests) the last transaction to commit wins."""

    def __init__(self, write_seq: int | None = None):
        self.write_seq = write_seq
        self._fenced: set[str] = set()

    @abstractmethod
    def _upsert(self, tbl, owner: RowOwner, rows: Iterable[tuple]) -> int:
        """Stream encoded rows of ``owner`` into ``tbl`` (a ``schema.Table``); the
        backend's bulk path. Returns the number of distinct keys written."""

    @abstractmethod
    def _take_fence(self, connection_id: str, write_seq: int) -> bool:
        """Record ``write_seq`` as the connection's latest writer, locked until the
        transaction ends; False (nothing changed) when a larger one is recorded."""

    def _fence(self, owner: RowOwner) -> None:
        if self.write_seq is None or owner.connection_id in self._fenced:
            return
        if not self._take_fence(owner.connection_id, self.write_seq):
            raise StaleWrite(
                f"connection {owner.connection_id}: a later delivery of its job (or a later "
                f"job) has written its rows; this one (claim {self.write_seq}) writes nothing"
            )
        self._fenced.add(owner.connection_id)

    def upsert_campaigns(
        self,
        platform: str,
        owner: RowOwner,
        account: Account,
        rows: Iterable[Campaign],
        synced_at: datetime,
    ) -> int:
        """Upsert into ``{platform}_ads_campaigns``; currency is the account's."""
        from clearlift_cli.warehouse import schema

        tbl = schema.campaigns_table(platform)
        self._fence(owner)
        return self._upsert(tbl, owner, schema.campaign_rows(owner, account, rows, synced_at))

    def upsert_daily_metrics(
        self,
        platform: str,
        owner: RowOwner,
        account: Account,
        rows: Iterable[DailyMetric],
        synced_at: datetime,
    ) -> int:
        """Upsert into ``{platform}_ads_daily_metrics``; currency is the account's."""
        from clearlift_cli.warehouse import schema

        tbl = schema.daily_metrics_table(platform)
        self._fence(owner)
        return self._upsert(tbl, owner, schema.daily_metric_rows(owner, account, rows, synced_at))

    def upsert_charges(
        self, owner: RowOwner, account: Account, rows: Iterable[Charge], synced_at: datetime
    ) -> int:
        """Upsert into ``stripe_charges``; ``charge_date`` is ``created_at`` in the
        account's time zone."""
        from clearlift_cli.warehouse import schema

        self._fence(owner)
        return self._upsert(schema.STRIPE_CHARGES, owner, schema.charge_rows(owner, account, rows, synced_at))

    def update_stored_charges(
        self, owner: RowOwner, account: Account, rows: Iterable[Charge], synced_at: datetime
    ) -> tuple[int, set[date]]:
        """Upsert those of ``rows`` already stored for the owner's account (a refund made
        long after the charge changes a charge synced earlier); charges never stored are
        left out, so no day gets a lone charge. Returns how many rows were written and the
        charge dates they were and are on (to rebuild their revenue)."""
        from clearlift_cli.warehouse import schema

        self._fence(owner)
        written, days = 0, set[date]()
        date_at = schema.STRIPE_CHARGES.column_names.index("charge_date")
        for chunk in chunked(rows):
            stored = self._stored_charge_dates(owner, sorted({c.charge_id for c in chunk}))
            keep = list(
                schema.charge_rows(owner, account, (c for c in chunk if c.charge_id in stored), synced_at)
            )
            days.update(stored.values())
            days.update(row[date_at] for row in keep)
            written += self._upsert(schema.STRIPE_CHARGES, owner, keep)
        return written, days

    @abstractmethod
    def _stored_charge_dates(self, owner: RowOwner, charge_ids: list[str]) -> dict[str, date]:
        """charge id -> charge_date of those of ``charge_ids`` stored for the owner's account."""

    def rebuild_daily_revenue(
        self, owner: RowOwner, account: Account, since: date, until: date, synced_at: datetime
    ) -> int:
        """Recompute ``stripe_daily_revenue`` for ``since``..``until`` (inclusive, account
        time zone dates) from every stored charge of the owner's account: rows whose sums
        changed are rewritten, days left without counted charges are deleted, unchanged
        rows are left alone. Returns the number of revenue rows the range now holds. Only
        charges that are paid, succeeded and captured count: gross is what was captured (the
        whole amount for rows stored before captures were), refunded what was refunded of
        it, net = gross - refunded, and their count. An authorisation never captured is no
        revenue."""
        from clearlift_cli.warehouse import schema

        self._fence(owner)
        return self._rebuild_daily_revenue(
            owner,
            schema.a_date(since, "since"),
            schema.a_date(until, "until"),
            schema.utc(synced_at, "synced_at"),
        )

    @abstractmethod
    def _rebuild_daily_revenue(self, owner: RowOwner, since: date, until: date, synced_at: datetime) -> int:
        """The backend's ``rebuild_daily_revenue`` (arguments checked)."""


class Warehouse(ABC):
    """One warehouse, safe to share between threads: each ``transaction()`` runs on a
    connection of its own."""

    backend: str
    # True when one transaction at a time may write (SQLite's file lock): callers should
    # fetch before opening a transaction rather than hold it across slow I/O.
    single_writer: bool = False
    url_for_display: str  # the URL with any password masked

    @abstractmethod
    def init_schema(self, *, read_policy: str | None = None) -> None:
        """Create or upgrade the tables and indexes; idempotent. Records the schema
        version in ``clearlift_warehouse_meta``; refuses a warehouse newer than this code.
        ``read_policy``: a SQL condition for a read policy on the tables created now
        (PostgreSQL's row level security; see ``CLEARLIFT_WAREHOUSE_READ_POLICY``)."""

    @abstractmethod
    def schema_version(self) -> int | None:
        """The recorded schema version, None before ``init_schema``."""

    @abstractmethod
    def transaction(self, write_seq: int | None = None) -> AbstractContextManager[WarehouseWriter]:
        """A writer whose writes commit on clean exit and roll back on exception.
        Connection failures raise ``WarehouseError`` (after rolling back). ``write_seq`` is
        the store's claim sequence of the delivery writing (see ``WarehouseWriter``)."""

    @abstractmethod
    def count_rows(self, table: str, organization_id: str | None = None) -> int:
        """Rows in ``table`` (one organisation's when given)."""

    @abstractmethod
    def fetch_rows(
        self,
        table: str,
        *,
        organization_id: str | None = None,
        account_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Rows of ``table`` as dicts ordered by the table's key: money and counts as
        ``int``, conversions as ``Decimal``, dates as ``date``, timestamps as aware UTC
        ``datetime``, ``paid`` as ``bool``."""

    @abstractmethod
    def close(self) -> None:
        """Close every idle connection; the warehouse must not be used afterwards."""

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url_for_display}>"


# --- helpers shared by the backends ---------------------------------------------------------


class KeyedBatches:
    """The chunks of one upsert call with one row per key (the last one seen wins: an
    upsert statement may touch a row only once), and the count of distinct keys written.

    Keys seen by earlier chunks are remembered by their hash (about 50 bytes per key, not
    the key's strings: a 90-day slice of 1,000 campaigns stays under 5 MB); two keys
    sharing a 64-bit hash would be counted once and merged instead of copied, never lost."""

    def __init__(self, tbl, rows: Iterable[tuple], size: int = CHUNK_SIZE):
        self._key = itemgetter(*tbl.key_positions)  # in C: this runs for every row written
        self._rows = rows
        self._size = size
        self._seen: set[int] = set()

    @property
    def count(self) -> int:
        return len(self._seen)

    def __iter__(self) -> Iterator[tuple[list[tuple], bool]]:
        """``(rows, repeats)``: a chunk without repeated keys, and whether any of its keys
        was in an earlier chunk (then it must be merged, not inserted)."""
        key, seen = self._key, self._seen
        for chunk in chunked(self._rows, self._size):
            hashes = set(map(hash, map(key, chunk)))
            repeats = not seen.isdisjoint(hashes)
            seen |= hashes
            if len(hashes) != len(chunk):  # a key repeats within the chunk: keep its last row
                chunk = list({key(row): row for row in chunk}.values())
            yield chunk, repeats


def chunked(rows: Iterable, size: int = CHUNK_SIZE) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items, pulled lazily from ``rows``."""
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


C = TypeVar("C")


class ConnectionPool(Generic[C]):
    """Idle connections waiting for the next transaction. A connection is used by one
    thread at a time: taken with ``acquire``, handed back with ``release``. Without
    ``max_idle`` every connection handed back is kept, so the pool holds at most as many as
    were in use at once (the consumer's concurrency): a cap below that closed and reopened a
    connection for most jobs of a run at concurrency 16 (issue 19)."""

    def __init__(self, connect: Callable[[], C], close: Callable[[C], None], max_idle: int | None = None):
        self._connect = connect
        self._close = close
        self._max_idle = max_idle
        self._idle: list[C] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> tuple[C, bool]:
        """A connection and whether it is freshly opened (an idle one may have gone stale)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the warehouse is closed")
            if self._idle:
                return self._idle.pop(), False
        return self._connect(), True

    def release(self, conn: C, *, reusable: bool = True) -> None:
        with self._lock:
            room = self._max_idle is None or len(self._idle) < self._max_idle
            if reusable and not self._closed and room:
                self._idle.append(conn)
                return
        self.discard(conn)

    def discard(self, conn: C) -> None:
        try:
            self._close(conn)
        except Exception:  # a broken connection may fail to close; it is gone either way
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)
