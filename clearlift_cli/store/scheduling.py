"""The store's scheduling operations: which connections may be due, creating their jobs
with their queue messages, and the job rows clearlift did not create (adoption).

A job row (ClearLift's ``sync_jobs``) and its message (clearlift's ``sync_queue``) are
created together: in one transaction when they share a database; with D1, the guarded D1
inserts first and the messages after (a crash in between leaves pending rows with no
message, which the next ``schedule`` adopts under their own ids).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clearlift_cli.d1 import Statement, in_list
from clearlift_cli.errors import Conflict
from clearlift_cli.models import SyncJobMessage

from .operations import BaseStore
from .schema import CONNECTION_COLUMNS, LIVE
from .tables import stmt as _s

# Job rows and messages created per transaction: short transactions keep consumers moving
# (2,000 take ~0.1 s of CPU; each commit of SQLite's may also checkpoint the WAL, so
# 500 per transaction cost 10k jobs ~0.1 s more).
CHUNK = 2000

# What planning a job and its message read of a ``Store.due_candidates`` row (all of
# CONNECTION_COLUMNS), as positions in it, in this order: id, organization_id, platform,
# account_id, last_synced_at, settings, consecutive_auth_failures (read only to refuse a row
# ``Connection.from_row`` would refuse: the consumer builds one).
_COLUMN_NAMES = [name.strip() for name in CONNECTION_COLUMNS.split(",")]
DUE_POSITIONS = tuple(
    _COLUMN_NAMES.index(name)
    for name in (
        "id",
        "organization_id",
        "platform",
        "account_id",
        "last_synced_at",
        "settings",
        "consecutive_auth_failures",
    )
)


class AlreadyQueued(Conflict):
    """The connection got a live job from an overlapping run meanwhile (safe by design)."""


@dataclass(frozen=True)
class NewJob:
    """A job to create: its row's metadata and its message (which carries id, connection,
    type and window)."""

    message: SyncJobMessage
    metadata: dict[str, Any]
    attribution: bool = False  # records the connection's last attribution-window job


@dataclass
class Created:
    jobs: list[str] = field(default_factory=list)  # job ids created with their messages
    already_live: list[str] = field(default_factory=list)  # connection ids with a live job row
    message_live: list[str] = field(default_factory=list)  # connection ids with a live message only


_LIVE_JOB_INSERT = f"""
    INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at,
                           updated_at, metadata, records_synced, progress_percentage)
    SELECT ?, ?, ?, 'pending', ?, ?, ?, ?, 0, 0
     WHERE NOT EXISTS (SELECT 1 FROM sync_jobs WHERE connection_id = ? AND status IN {LIVE})
"""

# Rows per multi-row INSERT: 100 rows of at most 9 parameters stay under 999, the oldest
# SQLite's limit on bound parameters.
ROWS_PER_INSERT = 100


def _live_jobs_insert(n: int) -> str:
    """``_LIVE_JOB_INSERT`` for ``n`` rows in one statement, each guarded alike (parameters
    per row: id, organization, connection, job type, created_at, metadata). Its guard does
    not see the statement's own rows: the caller never puts a connection in it twice."""
    marks = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in range(n))
    return f"""
    INSERT INTO sync_jobs (id, organization_id, connection_id, status, job_type, created_at,
                           updated_at, metadata, records_synced, progress_percentage)
    SELECT v.column1, v.column2, v.column3, 'pending', v.column4, v.column5, v.column5, v.column6, 0, 0
      FROM (VALUES {marks}) v
     WHERE NOT EXISTS (SELECT 1 FROM sync_jobs j WHERE j.connection_id = v.column3 AND j.status IN {LIVE})
"""


def _insert_live_jobs(c: Any, jobs: list[NewJob]) -> int:
    """Insert the job rows of ``jobs`` (distinct connections), each only if its connection
    has no live job row; returns how many were inserted."""
    done = 0
    for i in range(0, len(jobs), ROWS_PER_INSERT):
        part = jobs[i : i + ROWS_PER_INSERT]
        params: list[Any] = []
        for job in part:
            m = job.message
            params += (
                m.job_id,
                m.organization_id,
                m.connection_id,
                m.job_type.value,
                m.created_at,
                _METADATA_JSON(job.metadata),
            )
        done += c.execute(_live_jobs_insert(len(part)), params).rowcount
    return done


_ATTRIBUTION_UPSERT = (
    "INSERT INTO clearlift_connection_state (connection_id, last_attribution_window_at) "
    "VALUES (?, ?) ON CONFLICT (connection_id) DO UPDATE SET "
    "last_attribution_window_at = excluded.last_attribution_window_at"
)


# json.dumps(value, allow_nan=False) with its encoder built once (not once per job).
_METADATA_JSON = json.JSONEncoder(allow_nan=False).encode


def _job_row(job: NewJob) -> tuple[Any, ...]:
    m = job.message
    return (
        m.job_id,
        m.organization_id,
        m.connection_id,
        m.job_type.value,
        m.created_at,
        m.created_at,
        _METADATA_JSON(job.metadata),
        m.connection_id,
    )


class _Raced(Exception):
    """A bulk insert created fewer rows than planned: another writer got there first."""


class Store(BaseStore):
    """ClearLift's tables and clearlift's control plane, as operations: ``BaseStore``'s and
    scheduling's (``open_store`` returns one)."""

    def due_candidates(self, cutoff_julian: float) -> list[Any]:
        """Rows that may be due, found through indexes so the cost follows the due ones:
        never synced (or unparseable), synced before ``cutoff_julian``, or with their own
        interval. No live job, no pending re-auth. One query (one D1 request). Rows of
        ``CONNECTION_COLUMNS`` (``DUE_POSITIONS``: where the scheduler reads them)."""
        live = (
            "NOT EXISTS (SELECT 1 FROM sync_jobs j WHERE j.connection_id = c.id "
            f"AND j.status IN {LIVE}) AND coalesce(c.needs_reauth, 0) = 0"
        )
        cols = ", ".join(f"c.{col}" for col in _COLUMN_NAMES)
        # `+c.is_active` in the last branch keeps SQLite on the partial override index; on the
        # is_active index it would test instr() on every active connection.
        sql = f"""
            SELECT {cols} FROM platform_connections c
             WHERE c.is_active = 1 AND julianday(c.last_synced_at) IS NULL AND {live}
            UNION
            SELECT {cols} FROM platform_connections c
             WHERE c.is_active = 1 AND julianday(c.last_synced_at) <= ? AND {live}
            UNION
            SELECT {cols} FROM platform_connections c
             WHERE instr(c.settings, 'sync_interval_minutes') > 0 AND +c.is_active = 1 AND {live}
        """
        return self.tables.read(sql, (cutoff_julian,))

    def attribution_state(self, connection_ids: list[str]) -> dict[str, str | None]:
        """When each of these connections last had an attribution-window job (raw text)."""
        sql = (
            "SELECT connection_id, last_attribution_window_at FROM clearlift_connection_state "
            "WHERE connection_id IN ({in})"
        )
        out: dict[str, str | None] = {r[0]: r[1] for r in _control_rows(self, None, sql, connection_ids)}
        return out

    def create_jobs(self, queue: Any, jobs: Sequence[NewJob]) -> Created:
        """Create ``jobs`` (rows + messages), ``CHUNK`` per transaction. A connection that
        has a live job row meanwhile is counted in ``already_live``; one that has only a
        live message in ``message_live`` (worth a look); neither gets a second job."""
        result = Created()
        for i in range(0, len(jobs), CHUNK):
            chunk = list(jobs[i : i + CHUNK])
            if self.split:
                _create_split(self, queue, chunk, result)
                continue
            try:
                with self.write() as c:
                    self.lock_scheduling(c)
                    _create_bulk(self, c, queue, chunk, result)
            except _Raced:
                # Something wrote live jobs between our look and our insert (the chunk was
                # rolled back whole): do it again one connection at a time.
                with self.write() as c:
                    self.lock_scheduling(c)
                    _create_one_by_one(self, c, queue, chunk, result)
        return result

    def create_job(self, queue: Any, job: NewJob) -> str:
        """Create one job (``sync --now``). Raises AlreadyQueued / Conflict (nothing kept)."""
        result = self.create_jobs(queue, [job])
        if result.jobs:
            return result.jobs[0]
        cid = job.message.connection_id
        if result.already_live:
            raise AlreadyQueued(f"connection {cid} already has a pending or running job")
        raise Conflict(f"connection {cid} already has a queued or running job")

    # -- job rows clearlift did not create (adoption) ------------------------------------------

    def orphan_jobs(self) -> list[Any]:
        """``pending`` and ``running`` job rows with no live queue message, with their
        connection's columns (``conn_id`` NULL when the connection is gone)."""
        rows = self.tables.read(
            "SELECT j.id, j.status, j.job_type, j.connection_id, j.created_at, j.started_at, "
            "j.updated_at, j.metadata, c.id AS conn_id, c.organization_id AS conn_org, "
            "c.platform, c.account_id, c.is_active, c.needs_reauth "
            "FROM sync_jobs j LEFT JOIN platform_connections c ON c.id = j.connection_id "
            f"WHERE j.status IN {LIVE}"
        )
        if not rows:
            return []
        live = _live_message_jobs(self, [r["id"] for r in rows])
        return [r for r in rows if r["id"] not in live]

    def adopt_job(self, c: Any, queue: Any, job_id: str, message: SyncJobMessage, metadata: str) -> str:
        """Adopt a pending row with no live message (inside the scheduling transaction
        ``c``): record ``metadata`` on it and enqueue ``message`` under its id. Returns
        ``adopted``, ``gone`` (no longer pending, or it has a live message now) or
        ``busy`` (its connection has another live message; nothing changed)."""
        if _live_message_jobs(self, [job_id], c):
            return "gone"
        update = _s(
            "UPDATE sync_jobs SET metadata = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
            metadata,
            self.now_iso(),
            job_id,
        )
        # A savepoint: on PostgreSQL a unique violation (a racing `queue retry`) would
        # otherwise abort the whole transaction; an adoption that cannot enqueue must leave
        # the row exactly as it was.
        c.execute("SAVEPOINT clearlift_adopt")
        try:
            if self.split:
                if not queue.can_enqueue(c, message):
                    raise Conflict("busy")
                (r,) = self.tables.run(None, [update])
            else:
                (r,) = self.tables.run(c, [update])
            if r.rowcount == 1:
                try:
                    queue.enqueue(c, message)
                except Conflict:
                    if not queue.revive(c, message):
                        raise
        except Exception as exc:
            if not isinstance(exc, (Conflict, *self.integrity_errors)):
                raise
            c.execute("ROLLBACK TO SAVEPOINT clearlift_adopt")
            c.execute("RELEASE SAVEPOINT clearlift_adopt")
            return "busy"
        c.execute("RELEASE SAVEPOINT clearlift_adopt")
        return "adopted" if r.rowcount == 1 else "gone"

    def close_job(self, c: Any, row: Any, error: str, *, status: str) -> bool:
        """Close the job as failed, guarded: only if it is still ``status``, still has no
        live message and (for running rows) has not moved since it was read. Its
        connection, left ``syncing`` by a dead worker, says why — unless a live job of
        clearlift's own is syncing it now."""
        if _live_message_jobs(self, [row["id"]], c):
            return False
        stamp = self.now_iso()
        stmts = [
            _s(
                "UPDATE sync_jobs SET status = 'failed', completed_at = ?, error_message = ?, updated_at = ?, "
                "current_phase = 'failed' WHERE id = ? AND status = ? "
                "AND coalesce(updated_at, '') = coalesce(CAST(? AS TEXT), '')",
                stamp,
                error,
                stamp,
                row["id"],
                status,
                row["updated_at"],
            )
        ]
        conn_id = row["conn_id"]
        connection_busy = conn_id is not None and bool(
            c.execute(
                "SELECT 1 FROM sync_queue WHERE connection_id = ? AND state IN ('ready', 'leased')",
                (conn_id,),
            ).fetchone()
        )
        if conn_id is not None and not connection_busy:
            stmts.append(
                _s(
                    "UPDATE platform_connections SET sync_status = 'failed', sync_error = ? "
                    "WHERE id = ? AND sync_status = 'syncing' AND EXISTS (SELECT 1 FROM sync_jobs "
                    "WHERE id = ? AND status = 'failed' AND completed_at = ? AND error_message = ?)",
                    error,
                    conn_id,
                    row["id"],
                    stamp,
                    error,
                )
            )
        return self.tables.run(c, stmts)[0].rowcount == 1

    def withdraw_job(self, c: Any, job_id: str) -> None:
        """Delete a pending job row nobody ran (its message was withdrawn in ``c``)."""
        self.tables.run(c, [_s("DELETE FROM sync_jobs WHERE id = ? AND status = 'pending'", job_id)])

    def requeue_job(self, c: Any, job_id: str) -> None:
        """A dead letter queued again: its job row back to ``pending``."""
        self.tables.run(
            c,
            [
                _s(
                    "UPDATE sync_jobs SET status = 'pending', completed_at = NULL, updated_at = ? WHERE id = ?",
                    self.now_iso(),
                    job_id,
                )
            ],
        )


# Values per IN list on the control plane's engines (SQLite and PostgreSQL allow far more;
# this keeps each statement small).
CONTROL_IN = 500


def _control_rows(store: Store, c: Any, sql: str, values: Sequence[Any]) -> list[Any]:
    """The rows of ``sql`` (whose ``{in}`` takes ``values``) on the control plane: in the
    transaction ``c``, or a read when None; ``CONTROL_IN`` values per statement."""
    rows: list[Any] = []
    for s in in_list(sql, values, max_params=CONTROL_IN):
        rows += c.execute(s.sql, s.params).fetchall() if c is not None else store.read(s.sql, s.params)
    return rows


def _live_message_jobs(store: Store, job_ids: list[str], c: Any = None) -> set[str]:
    """Of ``job_ids``, those with a live (ready or leased) queue message."""
    sql = "SELECT job_id FROM sync_queue WHERE state IN ('ready', 'leased') AND job_id IN ({in})"
    return {r[0] for r in _control_rows(store, c, sql, job_ids)}


def _live_connections(store: Store, c: Any, ids: list[str]) -> tuple[set[str], set[str]]:
    """Of ``ids``, those with a pending/running job row and those with a live message. With
    D1 (``c`` None) the job rows are looked up only for the connections with a live
    message: for the others the guarded insert is the look-up (a live row makes it insert
    nothing, counted as ``already_live`` all the same), saving a request and, on D1 without
    clearlift's indexes, a scan of ``sync_jobs`` per 90 connections."""
    msg_sql = (
        "SELECT connection_id FROM sync_queue WHERE state IN ('ready', 'leased') AND connection_id IN ({in})"
    )
    messages = {r[0] for r in _control_rows(store, c, msg_sql, ids)}
    if store.split:
        return _d1_live(store, [i for i in ids if i in messages]), messages
    job_sql = f"SELECT connection_id FROM sync_jobs WHERE status IN {LIVE} AND connection_id IN ({{in}})"
    return {r[0] for r in _control_rows(store, c, job_sql, ids)}, messages


def _d1_live(store: Store, ids: list[str]) -> set[str]:
    """Live job rows of ``ids`` in D1 (``in_list``: at most 100 bound parameters a statement)."""
    sql = f"SELECT connection_id FROM sync_jobs WHERE status IN {LIVE} AND connection_id IN ({{in}})"
    return {r[0] for s in in_list(sql, ids) for r in store.tables.read(s.sql, s.params)}


def _sort_out(store: Store, c: Any, chunk: list[NewJob], result: Created) -> list[NewJob]:
    """The jobs of ``chunk`` whose connection has neither a live job row nor a live message
    (as far as a look tells: with D1, see ``_live_connections``)."""
    jobs_live, messages_live = _live_connections(store, c, [j.message.connection_id for j in chunk])
    todo = []
    for job in chunk:
        cid = job.message.connection_id
        if cid in jobs_live:
            result.already_live.append(cid)
        elif cid in messages_live:
            result.message_live.append(cid)
        else:
            todo.append(job)
    return todo


def _create_bulk(store: Store, c: Any, queue: Any, chunk: list[NewJob], result: Created) -> None:
    """A handful of statements for the chunk (multi-row inserts, not two statements per
    job). Raises _Raced, rolling the chunk back, if any insert found a live row after all."""
    todo = _sort_out(store, c, chunk, result)
    if not todo:
        return
    if len({j.message.connection_id for j in todo}) != len(todo):
        raise _Raced()  # a connection twice: the careful path creates one job for it
    if _insert_live_jobs(c, todo) != len(todo):
        raise _Raced()
    if queue.enqueue_many(c, [j.message for j in todo]) != len(todo):
        raise _Raced()
    attribution = [(j.message.connection_id, j.message.created_at) for j in todo if j.attribution]
    if attribution:
        c.executemany(_ATTRIBUTION_UPSERT, attribution)
    result.jobs.extend(j.message.job_id for j in todo)


def _create_one_by_one(store: Store, c: Any, queue: Any, chunk: list[NewJob], result: Created) -> None:
    """The careful path: one job at a time, each insert guarded on its own."""
    for job in chunk:
        m = job.message
        if c.execute(_LIVE_JOB_INSERT, _job_row(job)).rowcount == 0:
            result.already_live.append(m.connection_id)
            continue
        try:
            queue.enqueue(c, m)
        except Conflict:
            # no message, no job: take back the uncommitted row (the transaction goes on)
            c.execute("DELETE FROM sync_jobs WHERE id = ?", (m.job_id,))
            result.message_live.append(m.connection_id)
            continue
        if job.attribution:
            c.execute(_ATTRIBUTION_UPSERT, (m.connection_id, m.created_at))
        result.jobs.append(m.job_id)


def _create_split(store: Store, queue: Any, chunk: list[NewJob], result: Created) -> None:
    """D1: the guarded inserts first (independent statements, ``BATCH_STATEMENTS`` per
    request), then, locally, the messages of the rows that were created. A row whose
    message cannot be enqueued (a live one appeared) stays pending for adoption."""
    todo = _sort_out(store, None, chunk, result)
    if not todo:
        return
    from .d1 import D1Tables

    assert isinstance(store.tables, D1Tables)  # split: only D1's tables cannot share a transaction
    created = store.tables.run_chunked([Statement(_LIVE_JOB_INSERT, _job_row(j)) for j in todo])
    made = [j for j, r in zip(todo, created, strict=True) if r.rowcount == 1]
    result.already_live.extend(
        j.message.connection_id for j, r in zip(todo, created, strict=True) if r.rowcount != 1
    )
    if not made:
        return
    with store.write() as c:
        store.lock_scheduling(c)
        for job in made:
            m = job.message
            try:
                queue.enqueue(c, m)
            except Conflict:
                result.message_live.append(m.connection_id)
                continue
            if job.attribution:
                c.execute(_ATTRIBUTION_UPSERT, (m.connection_id, m.created_at))
            result.jobs.append(m.job_id)
