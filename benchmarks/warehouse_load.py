"""Warehouse load: daily-metric rows upserted by clearlift's writers vs the database's own
fast paths and vs dlt, measured in the same run.

PostgreSQL: ``Warehouse.transaction(write_seq=...).upsert_daily_metrics`` (new rows: binary
COPY straight into the table after a one-row probe; rows that may exist: COPY into a
staging table, one merge that skips unchanged rows) against (a) a raw COPY of the same rows
into an empty table with the same key and indexes, text and binary, the practical limit;
(b) psycopg ``executemany`` of an INSERT ... ON CONFLICT; (c) dlt's ``merge`` of the same
rows into the same server (``pip install '.[bench]'``; skipped with a note without it).
Replaying the same rows must write nothing: the table's size after the replay is reported.
SQLite (the embedded warehouse): the writer against a plain ``executemany`` INSERT into the
same table. Every variant starts from the DailyMetric objects and ends committed.
Targets: new rows >= 70% of raw COPY, a replay of unchanged rows >= 60%, >= 8x dlt.
"""

from __future__ import annotations

import os
import random
import tempfile
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from benchmarks._common import (
    PG_URL,
    Stopwatch,
    emit,
    heading,
    machine,
    parse_args,
    pg_schema,
    rnd,
    show,
    temp_home,
)
from clearlift_cli.platforms.base import Account, DailyMetric
from clearlift_cli.warehouse import RowOwner, open_warehouse
from clearlift_cli.warehouse.schema import daily_metrics_table

PLATFORM = "google"
TABLE = daily_metrics_table(PLATFORM)
OWNER = RowOwner("org-bench", "org-bench-google-1234567890", "1234567890")
ACCOUNT = Account("1234567890", "USD", "America/New_York", "Bench")
NEW_TARGET = 0.70  # of raw COPY
UPDATE_TARGET = 0.60  # a replay of unchanged rows, of raw COPY
DLT_TARGET = 8.0  # times dlt's merge
SQLITE_TARGET = 0.60  # of a plain executemany INSERT


def make_metrics(n: int) -> list[DailyMetric]:
    """``n`` campaign-days (500 campaigns, as many days as needed), numbers like the sandbox's."""
    r = random.Random(7)
    campaigns = [str(10_000_000_000 + i * 7919) for i in range(500)]
    first = date(2020, 1, 1)
    out = []
    for i in range(n):
        impressions = r.randint(1, 20_000)
        clicks = r.randint(0, impressions // 15)
        conversions = Decimal(r.randint(0, 40)) / 2
        out.append(
            DailyMetric(
                campaign_id=campaigns[i % len(campaigns)],
                metric_date=first + timedelta(days=i // len(campaigns)),
                impressions=impressions,
                clicks=clicks,
                spend_micros=clicks * r.randint(5, 300) * 10_000,
                conversions=conversions,
                conversion_value_micros=r.randint(0, 2_000_000) * 10_000 if conversions else 0,
            )
        )
    return out


def plain_row(m: DailyMetric, synced: datetime) -> tuple:
    """The row in column order, with no checks: what a hand-written loader would send."""
    return (
        OWNER.organization_id,
        OWNER.connection_id,
        OWNER.account_id,
        m.campaign_id,
        m.metric_date,
        m.impressions,
        m.clicks,
        m.spend_micros,
        m.conversions,
        m.conversion_value_micros,
        "USD",
        synced,
    )


# --- PostgreSQL ------------------------------------------------------------------------------


def pg_variants(url: str, metrics: list[DailyMetric], reps: int) -> dict:
    import psycopg
    from psycopg import sql

    n = len(metrics)
    cols = sql.SQL(", ").join(map(sql.Identifier, TABLE.column_names))
    key = sql.SQL(", ").join(map(sql.Identifier, TABLE.key))
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in TABLE.value_columns
    )
    binary_types = [
        "text",
        "text",
        "text",
        "text",
        "date",
        "int8",
        "int8",
        "int8",
        "numeric",
        "int8",
        "text",
        "timestamptz",
    ]
    wh = open_warehouse(url)
    wh.init_schema()
    admin = psycopg.connect(url, autocommit=True)
    target = sql.Identifier(TABLE.name)
    claims = iter(range(1, 1_000_000))  # the store's claim sequence, as the consumer passes it

    def fresh(name: str) -> sql.Identifier:
        ident = sql.Identifier(name)
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        admin.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(ident, target))
        return ident

    def raw_copy(binary: bool) -> float:
        table = fresh("bench_copy")
        synced = datetime.now(UTC)
        statement = sql.SQL("COPY {} ({}) FROM STDIN" + (" (FORMAT BINARY)" if binary else ""))
        with psycopg.connect(url) as conn, Stopwatch() as sw:
            with conn.cursor() as cur, cur.copy(statement.format(table, cols)) as copy:
                if binary:
                    copy.set_types(binary_types)
                for m in metrics:
                    copy.write_row(plain_row(m, synced))
            conn.commit()
        return sw.seconds

    def writer(rows: list[DailyMetric], *, clear: bool) -> float:
        if clear:
            admin.execute(sql.SQL("TRUNCATE {}").format(target))
        synced = datetime.now(UTC)
        with Stopwatch() as sw, wh.transaction(write_seq=next(claims)) as w:
            written = w.upsert_daily_metrics(PLATFORM, OWNER, ACCOUNT, rows, synced)
        assert written == n
        return sw.seconds

    def table_bytes() -> int:
        row = admin.execute("SELECT pg_total_relation_size(%s)", (TABLE.name,)).fetchone()
        assert row is not None
        return row[0]

    def executemany() -> float:
        table = fresh("bench_executemany")
        statement = sql.SQL(
            "INSERT INTO {t} AS existing ({cols}) VALUES ({ph}) ON CONFLICT ({key}) DO UPDATE SET {updates}"
        ).format(
            t=table,
            cols=cols,
            ph=sql.SQL(", ").join(sql.Placeholder() * len(TABLE.columns)),
            key=key,
            updates=updates,
        )
        synced = datetime.now(UTC)
        with psycopg.connect(url) as conn, Stopwatch() as sw:
            with conn.cursor() as cur:
                cur.executemany(statement, (plain_row(m, synced) for m in metrics))
            conn.commit()
        return sw.seconds

    try:
        # Interleaved, best of each: the machine's other load hits all of them alike.
        copies, binaries, inserts, replays, growth = [], [], [], [], []
        for _ in range(reps):
            copies.append(raw_copy(binary=False))
            binaries.append(raw_copy(binary=True))
            inserts.append(writer(metrics, clear=True))
            size = table_bytes()
            # The same rows again, a later claim: nothing changed, nothing may be written.
            replays.append(writer(metrics, clear=False))
            growth.append(table_bytes() - size)
        # Every value changed: each row is really rewritten (a new version, WAL).
        changed = [replace(m, impressions=m.impressions + 1) for m in metrics]
        changed_s = writer(changed, clear=False)
        counted = admin.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()
        assert counted is not None
        (stored,) = counted
        assert stored == n, (stored, n)
        many_s = executemany()
    finally:
        admin.close()
        wh.close()
    return {
        "copy_s": min(copies),
        "copy_binary_s": min(binaries),
        "writer_s": min(inserts),
        "writer_update_s": min(replays),
        "replay_growth_bytes": max(growth),
        "writer_changed_s": changed_s,
        "executemany_s": many_s,
    }


def dlt_merge(metrics: list[DailyMetric]) -> float | None:
    """Seconds for dlt to ``merge`` the rows into a dataset of its own on the same server,
    from the same rows as dicts (dlt's usual input) to the load committed; None when dlt is
    not installed."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # no network here
    try:
        import dlt
    except ImportError:
        return None
    import psycopg

    # dlt insists on a password; a server that trusts the connection ignores it.
    scheme, rest = PG_URL.split("://", 1)
    credentials = (
        PG_URL
        if ":" in rest.split("@", 1)[0] or "@" not in rest
        else (f"{scheme}://{rest.split('@', 1)[0]}:unused@{rest.split('@', 1)[1]}")
    )
    tag = uuid.uuid4().hex[:10]
    dataset = f"bench_dlt_{tag}"
    synced = datetime.now(UTC)
    names = TABLE.column_names
    rows = [dict(zip(names, plain_row(m, synced), strict=True)) for m in metrics]
    try:
        with tempfile.TemporaryDirectory(prefix="clearlift-dlt-") as workdir:
            pipeline = dlt.pipeline(
                pipeline_name=f"clearlift_bench_{tag}",
                pipelines_dir=workdir,
                destination=dlt.destinations.postgres(credentials=credentials),
                dataset_name=dataset,
                progress=None,
            )
            resource = dlt.resource(
                rows, name=TABLE.name, write_disposition="merge", primary_key=list(TABLE.key)
            )
            with Stopwatch() as sw:
                pipeline.run(resource)
        return sw.seconds
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for schema in (dataset, f"{dataset}_staging"):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# --- SQLite ----------------------------------------------------------------------------------


def sqlite_variants(metrics: list[DailyMetric], reps: int) -> dict:
    import sqlite3

    n = len(metrics)
    names = TABLE.column_names
    insert = f"INSERT INTO {TABLE.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

    with temp_home() as home:

        def writer(i: int) -> tuple[float, float]:
            wh = open_warehouse(f"sqlite:///{home}/writer-{i}.db")
            wh.init_schema()
            synced = datetime.now(UTC)
            try:
                with Stopwatch() as sw, wh.transaction(write_seq=1) as w:
                    assert w.upsert_daily_metrics(PLATFORM, OWNER, ACCOUNT, metrics, synced) == n
                with Stopwatch() as again, wh.transaction(write_seq=2) as w:
                    w.upsert_daily_metrics(PLATFORM, OWNER, ACCOUNT, metrics, synced + timedelta(seconds=1))
            finally:
                wh.close()
            return sw.seconds, again.seconds

        def plain(i: int) -> float:
            # Same file settings and table (key, indexes) as the writer's, made by init_schema.
            with open_warehouse(f"sqlite:///{home}/plain-{i}.db") as made:
                made.init_schema()
            conn = sqlite3.connect(f"{home}/plain-{i}.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            synced = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            with Stopwatch() as sw:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    insert,
                    (
                        (
                            OWNER.organization_id,
                            OWNER.connection_id,
                            OWNER.account_id,
                            m.campaign_id,
                            m.metric_date.isoformat(),
                            m.impressions,
                            m.clicks,
                            m.spend_micros,
                            str(m.conversions),
                            m.conversion_value_micros,
                            "USD",
                            synced,
                        )
                        for m in metrics
                    ),
                )
                conn.execute("COMMIT")
            conn.close()
            return sw.seconds

        plains, runs = [], []
        for i in range(reps):
            plains.append(plain(i))
            runs.append(writer(i))
    return {
        "plain_s": min(plains),
        "writer_s": min(r[0] for r in runs),
        "writer_update_s": min(r[1] for r in runs),
    }


def main() -> None:
    args = parse_args(__doc__)
    n = 20_000 if args.quick else 200_000
    reps = 1 if args.quick else 3
    metrics = make_metrics(n)

    def rate(seconds: float | None) -> float | None:
        return None if seconds is None else n / seconds

    def verdict(ratio: float, target: float, unit: str = "") -> str:
        return f"target >= {target:g}{unit}: {'met' if ratio >= target else 'MISSED'}"

    heading(f"PostgreSQL: {n:,} daily-metric rows, best of {reps}")
    with pg_schema("bench_wh") as url:
        pg = pg_variants(url, metrics, reps)
    dlt_s = dlt_merge(metrics)
    # The baseline is the faster raw COPY: text (psycopg's default) or binary.
    copy_s = min(pg["copy_s"], pg["copy_binary_s"])
    new_ratio = copy_s / pg["writer_s"]
    update_ratio = copy_s / pg["writer_update_s"]
    dlt_ratio = None if dlt_s is None else dlt_s / pg["writer_s"]
    show("raw COPY (text) into an empty indexed table", f"{rate(pg['copy_s']):>10,.0f} rows/s")
    show(
        "raw COPY (binary) into an empty indexed table",
        f"{rate(pg['copy_binary_s']):>10,.0f} rows/s",
        "(baseline: the faster COPY)",
    )
    show(
        "clearlift writer, new rows",
        f"{rate(pg['writer_s']):>10,.0f} rows/s",
        f"{new_ratio:.0%} of COPY ({verdict(new_ratio * 100, NEW_TARGET * 100, '%')})",
    )
    show(
        "clearlift writer, same rows again (replay)",
        f"{rate(pg['writer_update_s']):>10,.0f} rows/s",
        f"{update_ratio:.0%} of COPY ({verdict(update_ratio * 100, UPDATE_TARGET * 100, '%')}); "
        f"table grew {pg['replay_growth_bytes']:,} bytes",
    )
    show(
        "clearlift writer, every row changed",
        f"{rate(pg['writer_changed_s']):>10,.0f} rows/s",
        f"{copy_s / pg['writer_changed_s']:.0%} of COPY",
    )
    show(
        "psycopg executemany upsert",
        f"{rate(pg['executemany_s']):>10,.0f} rows/s",
        f"writer is {pg['executemany_s'] / pg['writer_s']:.1f}x faster",
    )
    if dlt_s is None or dlt_ratio is None:
        show("dlt merge", "skipped", "dlt is not installed: pip install '.[bench]'")
    else:
        show(
            "dlt merge (same rows, same server)",
            f"{rate(dlt_s):>10,.0f} rows/s",
            f"writer is {dlt_ratio:.1f}x faster ({verdict(dlt_ratio, DLT_TARGET, 'x')})",
        )

    heading(f"SQLite (embedded warehouse): {n:,} rows, best of {reps}")
    lite = sqlite_variants(metrics, reps)
    lite_ratio = lite["plain_s"] / lite["writer_s"]
    show("plain executemany INSERT", f"{rate(lite['plain_s']):>10,.0f} rows/s", "(baseline)")
    show(
        "clearlift writer, new rows",
        f"{rate(lite['writer_s']):>10,.0f} rows/s",
        f"{lite_ratio:.0%} of plain ({verdict(lite_ratio * 100, SQLITE_TARGET * 100, '%')})",
    )
    show(
        "clearlift writer, same rows again (replay)",
        f"{rate(lite['writer_update_s']):>10,.0f} rows/s",
        f"{lite['plain_s'] / lite['writer_update_s']:.0%} of plain",
    )

    met = (
        new_ratio >= NEW_TARGET
        and update_ratio >= UPDATE_TARGET
        and (dlt_ratio is None or dlt_ratio >= DLT_TARGET)
        and lite_ratio >= SQLITE_TARGET
    )
    emit(
        "warehouse_load",
        rows=n,
        quick=args.quick,
        **machine(),
        rows_per_s=rnd(rate(pg["writer_s"]), 0),
        copy_rows_per_s=rnd(rate(pg["copy_s"]), 0),
        copy_binary_rows_per_s=rnd(rate(pg["copy_binary_s"]), 0),
        update_rows_per_s=rnd(rate(pg["writer_update_s"]), 0),
        changed_rows_per_s=rnd(rate(pg["writer_changed_s"]), 0),
        replay_growth_bytes=pg["replay_growth_bytes"],
        executemany_rows_per_s=rnd(rate(pg["executemany_s"]), 0),
        dlt_rows_per_s=rnd(rate(dlt_s), 0),
        ratio_vs_copy=rnd(new_ratio),
        update_ratio_vs_copy=rnd(update_ratio),
        ratio_vs_dlt=rnd(dlt_ratio),
        ratio_vs_executemany=rnd(pg["executemany_s"] / pg["writer_s"]),
        sqlite_rows_per_s=rnd(rate(lite["writer_s"]), 0),
        sqlite_plain_rows_per_s=rnd(rate(lite["plain_s"]), 0),
        sqlite_update_rows_per_s=rnd(rate(lite["writer_update_s"]), 0),
        sqlite_ratio_vs_executemany=rnd(lite_ratio),
        targets={
            "new_vs_copy": NEW_TARGET,
            "replay_vs_copy": UPDATE_TARGET,
            "vs_dlt": DLT_TARGET,
            "sqlite_vs_plain": SQLITE_TARGET,
        },
        target_met=met,
    )


if __name__ == "__main__":
    main()
