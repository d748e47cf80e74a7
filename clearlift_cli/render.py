"""Rich rendering for people: tables, panels, progress. Only the CLI imports this."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from clearlift_cli.redact import redact
from clearlift_cli.status import REAUTH_HINT, ConnectionReport, StatusOverview, _records
from clearlift_cli.timeutil import iso_z

_STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "syncing": "cyan",
    "running": "cyan",
    "pending": "yellow",
}


def _styled(value: str | None) -> Text:
    v = value or "-"
    return Text(v, style=_STATUS_STYLE.get(v, ""))


def connections_table(conns) -> Table:
    t = Table(title=f"{len(conns)} connection(s)")
    for col in ("id", "platform", "account", "active", "status", "last synced", "expires"):
        t.add_column(col)
    for c in conns:
        t.add_row(
            c.id,
            c.platform,
            c.account_name or c.account_id,
            "yes" if c.is_active else "paused",
            _styled("needs re-auth" if c.needs_reauth else c.sync_status),
            c.last_synced_at or "never",
            c.expires_at or "-",
        )
    return t


def _short(ts: str | None) -> str:
    """'2025-10-10T20:45:30.123Z' -> '2025-10-10 20:45' (either stored spelling)."""
    if not ts:
        return "never"
    return ts.replace("T", " ")[:16]


def status_table(reports: list[ConnectionReport], title: str | None = None) -> Table:
    if title is None:
        failing = sum(r.failing for r in reports)
        active = sum(r.connection.is_active for r in reports)
        title = f"{len(reports)} connection(s): {active} active, {failing} failing"
    t = Table(title=title or None, title_justify="left")
    t.add_column("connection", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("last synced (UTC)", no_wrap=True)
    t.add_column("latest job", no_wrap=True)
    t.add_column("records", justify="right")
    t.add_column("error", overflow="ellipsis", max_width=40, no_wrap=True)
    t.add_column("next attempt (UTC)", no_wrap=True)
    for r in reports:
        c, j = r.connection, r.latest_job
        state = "paused" if not c.is_active else "needs re-auth" if c.needs_reauth else c.sync_status
        if c.is_active and r.problem and not c.needs_reauth:
            state = "failed"  # `schedule` skips a broken row: it will not sync until fixed
        t.add_row(
            c.id,
            _styled(state),
            _short(c.last_synced_at),
            _styled(f"{j['job_type']} {j['status']}" if j is not None else None),
            str(_records(j)) if j is not None else "-",
            redact(r.problem or c.sync_error or ""),
            _deferral(r),
        )
    return t


def notices(lines: list[str]) -> list[Text]:
    """One ``warning:`` line per notice (plain text: no markup is read from it)."""
    return [Text(f"warning: {redact(line)}", style="yellow") for line in lines]


def status_overview(ov: StatusOverview) -> list[Any]:
    """``status`` with no argument, top to bottom: the counts, one line per notice, the
    table (failing and re-auth rows first), and how many rows it leaves out."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(ov.by_status.items()))
    head = Text(f"{ov.total} connection(s): {ov.active} active ({states or 'none'}), {ov.paused} paused; ")
    head.append(f"{ov.failing} failing", style="red b" if ov.failing else "")
    head.append(f" ({ov.needs_reauth} need re-auth)" if ov.needs_reauth else "")
    out: list[Any] = [head]
    out += notices(ov.notices)
    if ov.reports:
        out.append(status_table(ov.reports, title=""))
    if ov.hidden_failing:
        out.append(
            Text(
                f"… {ov.hidden_failing} more failing not shown (clearlift status --failing lists every one)",
                style="red",
            )
        )
    if ov.hidden > ov.hidden_failing:
        out.append(
            Text(
                f"… {ov.hidden - ov.hidden_failing} other(s) not shown (clearlift status --all lists "
                "every row)",
                style="dim",
            )
        )
    return out


def _deferral(r: ConnectionReport) -> str:
    """'2025-10-10 21:45 (Rate limited by google; ...)' while the queued job waits, else ''."""
    if r.deferred is None:
        return ""
    return f"{_short(iso_z(r.deferred.until))} ({redact(r.deferred.reason)})"


def connection_panel(r: ConnectionReport) -> Panel:
    c, j = r.connection, r.latest_job
    lines = [
        f"[b]{c.id}[/b]  ({c.platform}, account {c.account_id}{' — ' + c.account_name if c.account_name else ''})",
        f"active: {'yes' if c.is_active else 'no (paused)'}    status: {c.sync_status or '-'}    "
        f"last synced: {c.last_synced_at or 'never'}",
    ]
    if r.problem:
        lines.append(f"[red]not scheduled:[/red] {escape(redact(r.problem))}")
    if c.sync_error:
        lines.append(f"[red]error:[/red] {redact(c.sync_error)}")
    if j is not None:
        progress = ""
        if j["status"] == "running":
            progress = f"  {j['current_phase'] or ''} {j['progress_percentage'] or 0}%"
        lines.append(
            f"latest job: {j['id']} {j['job_type']} [b]{j['status']}[/b]{progress}  records: {_records(j)}  "
            f"created {j['created_at']}  completed {j['completed_at'] or '-'}"
        )
        if j["error_message"]:
            lines.append(f"job error: {redact(j['error_message'])}")
    else:
        lines.append("latest job: none yet")
    lines.append(
        f"next due: {iso_z(r.next_due_at) if r.next_due_at else '- (paused, needs re-auth, or not scheduled)'}"
    )
    if r.deferred is not None:
        lines.append(
            f"[yellow]next attempt:[/yellow] {iso_z(r.deferred.until)} — {escape(redact(r.deferred.reason))}"
        )
    if r.coverage:
        lines.append("synced: " + ", ".join(f"{s}..{e}" for s, e in r.coverage))
    if r.gaps:
        lines.append(
            "[yellow]gaps:[/yellow] "
            + ", ".join(f"{s}..{e}" for s, e in r.gaps)
            + f"  (backfill: clearlift sync {c.id} --now --since {r.gaps[0][0]} --until {r.gaps[-1][1]})"
        )
    if c.needs_reauth:
        lines.append(
            f"[red b]needs re-authorisation[/red b] since {c.reauth_detected_at or '?'}: "
            f"{redact(c.reauth_reason or '')}"
        )
        lines.append(REAUTH_HINT)
    return Panel("\n".join(lines), title="clearlift status", expand=False)


def dead_table(rows) -> Table:
    t = Table(title=f"{len(rows)} dead letter(s)")
    for col in ("id", "job", "connection", "platform", "attempts", "failed at", "last error"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["job_id"],
            r["connection_id"],
            r["platform"],
            str(r["attempts"]),
            r["finished_at"] or "-",
            redact(r["last_error"] or ""),
        )
    return t


def run_with_progress(run: Callable[[Callable | None], Any], job_id: str):
    """Run a consume call for one job, showing a progress bar on a terminal."""
    if not sys.stderr.isatty():
        result = run(None)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            transient=False,
        ) as progress:
            task = progress.add_task("starting", total=None)

            def on_progress(_job: str, phase: str, done: int, total: int | None) -> None:
                progress.update(task, description=phase, completed=done, total=total)

            result = run(on_progress)
    outcome = next((o for o in result.outcomes if o.job_id == job_id), None)
    if outcome is None:
        print(f"job {job_id} was not run here (another consumer holds it, or it is delayed)")
    else:
        print(
            f"job {job_id}: {outcome.status}, {outcome.records} records in {outcome.seconds:.1f}s"
            + (f" — {outcome.error}" if outcome.error else "")
        )
    return outcome


def doctor_text(report) -> str:
    """``clearlift doctor`` for people and cron mail: the settings and where each came from,
    then one line per check: status, name, what was found — what to do."""
    lines = ["settings (flag > env > config file > default; secrets shown only as set / not set):"]
    width = max((len(name) for name, _, _ in report.settings), default=0)
    for name, value, source in report.settings:
        lines.append(f"  {name:<{width}}  {value}" + (f"  ({source})" if source != "-" else ""))
    lines.append("")
    width = max((len(c.name) for c in report.checks), default=0)
    for c in report.checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.message}"
        if c.fix and c.status != "ok":
            line += f" — {c.fix}"
        lines.append(redact(line))
    counts = report.counts()
    lines.append(f"doctor: {counts['fail']} failed, {counts['warn']} warning(s), {counts['ok']} ok")
    return "\n".join(lines) + "\n"
