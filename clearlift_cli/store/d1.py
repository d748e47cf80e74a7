"""ClearLift's tables in the live D1 database, over Cloudflare's REST API (``d1://ACCOUNT/DB``).

clearlift's own tables never go to D1: they stay in ``CLEARLIFT_CONTROL_DB`` (a local SQLite
file, or PostgreSQL for many hosts). D1 and that database cannot share a transaction, so
every operation that writes both sides follows one sequence (``Store`` implements it):

1. **D1 first, guarded.** The D1 statements of one step go in one batch (one request, one
   D1 transaction), and running it twice changes nothing the second time: ``running`` only
   from ``pending``/``running``, back to ``pending`` only from a live status, a new job only
   when the connection has no live one (all guarded by the row's status), and an ending
   (``completed``/``failed``) writes the same values again.
2. **Then the local side**, in one local transaction (the message acked, retried or
   dead-lettered; coverage; the schedule's messages).

A crash, a kill or a D1 error between the two leaves a state the next run repairs: a job
row written with no message is ``pending`` with no live message and ``schedule`` adopts it
under its own id; a message whose job row says ``completed``/``failed`` is acked without
running again when it is delivered; a ``running`` row whose message is gone is closed by
adoption after ``adoption.STALE_RUNNING_AFTER``. Nothing is lost and nothing stays running.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from clearlift_cli.d1 import D1Client, Statement
from clearlift_cli.errors import StoreError

from . import schema
from .tables import Result

# Statements per D1 request when many independent ones are sent (a schedule's new jobs):
# D1 documents no statement count per batch; 100 keeps each request far below the
# 1 MB body cap and D1's 30 s per request.
BATCH_STATEMENTS = 100


class D1Row:
    """A D1 result row (a JSON object) that reads like ``sqlite3.Row``: by position, by
    name, ``keys()``."""

    __slots__ = ("_d", "_v")

    def __init__(self, d: dict[str, Any]):
        self._d = d
        self._v = list(d.values())

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, (int, slice)):
            return self._v[key]
        return self._d[key]

    def keys(self) -> list[str]:
        return list(self._d)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)


class D1Tables:
    split = True

    def __init__(self, client: D1Client):
        self.client = client

    @property
    def display(self) -> str:
        return self.client.name

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return [D1Row(r) for r in self.client.query(sql, tuple(params))]

    def run(self, c: Any, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` as one D1 batch (``c``, the local transaction, is not part of it)."""
        out = []
        for rows in self.client.batch(list(statements)):
            out.append(Result(rows.meta.changes, [D1Row(r) for r in rows]))
        return out

    def run_chunked(self, statements: Sequence[Statement]) -> list[Result]:
        """Independent statements, ``BATCH_STATEMENTS`` per request."""
        out: list[Result] = []
        for i in range(0, len(statements), BATCH_STATEMENTS):
            out += self.run(None, statements[i : i + BATCH_STATEMENTS])
        return out

    def has_table(self, name: str) -> bool:
        return bool(self.read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def columns(self, table: str) -> set[str]:
        return {r["name"] for r in self.read(f"PRAGMA table_info({table})")}

    def migrate(self) -> list[str]:
        """Add the API worker's later columns the dashboard reads, where missing — and
        nothing else: no table, no index, nothing of clearlift's own."""
        have = {t: self.columns(t) for t in schema.APP_TABLE_NAMES}
        missing = [t for t, cols in have.items() if not cols and t != "onboarding_progress"]
        if missing:
            raise StoreError(
                f"D1 database {self.display} has no {', '.join(missing)} table: point CLEARLIFT_DB "
                "at the API worker's D1 database (clearlift never creates ClearLift's tables in D1)"
            )
        todo = schema.later_column_ddl("sqlite", have)
        for _, stmt in todo:
            self.client.query(stmt)
        return [f"{what} (D1)" for what, _ in todo]
