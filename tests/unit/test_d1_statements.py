"""Pure pieces of the D1 client: URLs, statement splitting, Retry-After, meta."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from clearlift_cli.d1 import MAX_SQL_BYTES, Meta, in_list, multi_row_insert, parse_d1_url
from clearlift_cli.errors import ConfigError, D1LimitExceeded
from clearlift_cli.platforms.http import parse_retry_after
from clearlift_cli.sandbox.d1 import split_statements


def test_parse_d1_url():
    assert parse_d1_url("d1://0123abcd/1111-2222") == ("0123abcd", "1111-2222")
    for bad in ("d1://acct", "d1://acct/db/extra", "d1:///db", "sqlite:///x", "d1://a b/c"):
        with pytest.raises(ConfigError):
            parse_d1_url(bad)


def test_in_list_keeps_every_statement_within_100_parameters():
    statements = in_list(
        "SELECT * FROM t WHERE org = ? AND id IN ({in}) AND n > ?",
        list(range(250)),
        before=["org-1"],
        after=[0],
    )
    assert [len(s.params) for s in statements] == [100, 100, 56]  # 98 + 98 + 54 values, 2 others each
    assert statements[0].params[:2] == ("org-1", 0) and statements[0].params[-1] == 0
    assert statements[0].sql.count("?") == 100 and "{in}" not in statements[0].sql
    assert [v for s in statements for v in s.params[1:-1]] == list(range(250))
    assert in_list("DELETE FROM t WHERE id IN ({in})", []) == []
    with pytest.raises(ValueError):
        in_list("SELECT 1", [1])


def test_multi_row_insert_respects_parameters_and_statement_length():
    rows = [(i, "x") for i in range(101)]
    statements = multi_row_insert("INSERT INTO t (a, b) VALUES", rows, row="(?, lower(?))")
    assert [len(s.params) for s in statements] == [100, 100, 2]
    assert statements[-1].sql == "INSERT INTO t (a, b) VALUES (?, lower(?))"

    # one value per row: 100 rows a statement, unless the SQL would pass 100,000 bytes first
    long_head = "INSERT INTO t (a) VALUES" + " " * (MAX_SQL_BYTES - 200)
    short = multi_row_insert(long_head, [(i,) for i in range(100)])
    assert all(len(s.sql.encode()) <= MAX_SQL_BYTES for s in short) and len(short) > 1

    with pytest.raises(D1LimitExceeded):
        multi_row_insert("INSERT INTO t VALUES", [tuple(range(101))])
    with pytest.raises(ValueError):
        multi_row_insert("INSERT INTO t VALUES", [(1, 2), (3,)])


def test_retry_after_reads_seconds_or_an_http_date():
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    later = format_datetime(datetime(2026, 11, 29, 12, 2, tzinfo=UTC), usegmt=True)
    assert parse_retry_after("30", now.timestamp()) == 30.0
    assert parse_retry_after(later, now.timestamp()) == 120.0
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after(None, now.timestamp()) is None


def test_meta_from_the_wire_tolerates_missing_fields():
    meta = Meta.from_wire(
        {
            "rows_read": 3,
            "rows_written": 1,
            "changes": 1,
            "last_row_id": 9,
            "duration": 0.25,
            "changed_db": True,
            "size_after": 8192,
            "served_by_region": "WEUR",
        }
    )
    assert meta == Meta(3, 1, 1, 9, 0.25, True, 8192)
    assert Meta.from_wire(None) == Meta()


def test_split_statements_keeps_trigger_bodies_whole():
    sql = """CREATE TABLE a (x); CREATE TRIGGER tr AFTER INSERT ON a BEGIN
        UPDATE a SET x = 1; DELETE FROM a WHERE x = 2; END; SELECT ';' AS s"""
    parts = split_statements(sql)
    assert len(parts) == 3 and parts[1].strip().startswith("CREATE TRIGGER") and "END;" in parts[1]
    assert parts[2].strip().startswith("SELECT ';'")
