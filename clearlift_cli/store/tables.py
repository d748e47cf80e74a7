"""Where ClearLift's tables (the API worker's) live: beside clearlift's own in one SQL
database (``SharedTables``), or in the live D1 over its REST API (``D1Tables``, store/d1.py).

Both run the same SQL (SQLite's dialect, ``?`` placeholders) and answer alike: ``read`` gives
rows that read by position and by name, ``run`` applies statements together and gives one
``Result`` per statement. With shared tables ``run`` joins the caller's open transaction on
clearlift's own tables, so a job row and its queue message commit together; D1 cannot share
a transaction with anything, so there ``run`` is one D1 batch (one request, one D1
transaction) and the store orders the two sides (see ``Store``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clearlift_cli.d1 import Statement

from .engine import Engine


def stmt(sql: str, *params: Any) -> Statement:
    return Statement(sql, tuple(params))


@dataclass
class Result:
    """What one statement did: rows changed, and the rows it returned (RETURNING, SELECT)."""

    rowcount: int
    rows: list[Any] = field(default_factory=list)


class Tables(Protocol):
    split: bool  # True when the tables cannot share a transaction with the control plane

    @property
    def display(self) -> str: ...

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def run(self, c: Any, statements: Sequence[Statement]) -> list[Result]: ...

    def has_table(self, name: str) -> bool: ...

    def migrate(self) -> list[str]: ...


class SharedTables:
    """ClearLift's tables in the engine that holds clearlift's own."""

    split = False

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def display(self) -> str:
        return self.engine.display

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.engine.read(sql, params)

    def run(self, c: Any, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` in ``c``, the caller's open write transaction (or a new one)."""
        if c is None:
            with self.engine.write() as own:
                return self.run(own, statements)
        out = []
        for s in statements:
            cur = c.execute(s.sql, s.params)
            rows = cur.fetchall() if cur.description else []
            out.append(Result(cur.rowcount, rows))
        return out

    def has_table(self, name: str) -> bool:
        return self.engine.has_table(name)

    def migrate(self) -> list[str]:
        return []  # the engine's migrate(app_tables=True) does it
