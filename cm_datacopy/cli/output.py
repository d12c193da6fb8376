"""What the CLI prints: one console for results (stdout), one for messages and logs (stderr), and the reports.

On a terminal, logs go through a rich console: ``err_console``, or the progress bar's console while
a bar is live (``logs_through``), so a log record prints above the bar instead of tearing it. Off a
terminal, logs are plain lines with a time stamp on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from cm_datacopy.redact import RedactingFilter
from cm_datacopy.run.status import RunStatus

# Off a terminal (logs, pipes) tables are not cut to 80 columns.
_WIDTH = {} if sys.stdout.isatty() else {"width": 200}
console = Console(highlight=False, soft_wrap=True, **_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_QUIET_LIBRARIES = ("snowflake.connector", "botocore", "urllib3", "filelock")


def setup_logging(verbose: bool) -> None:
    """WARNING and above (INFO with ``-v``), secrets masked; rich on a terminal, plain lines elsewhere."""
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("cm_datacopy").setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in _QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.ERROR)


@contextlib.contextmanager
def logs_through(live_console: Console) -> Iterator[None]:
    """Log records print through ``live_console`` (the one drawing a progress bar) meanwhile."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, RichHandler)]
    for handler in handlers:
        handler.console = live_console
    try:
        yield
    finally:
        for handler in handlers:
            handler.console = err_console


def print_json(data: Any) -> None:
    """One JSON document on stdout (never through rich: no wrapping, no markup)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def ago(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if hours < 48:
        return f"{hours:.1f} h ago"
    return f"{hours / 24:.0f} days ago"


def percent(done: int, total: int) -> str:
    return f"{100 * done / total:.0f}%" if total else "–"


def run_line(report: RunStatus) -> str:
    """``run <id>: <status>, started … (… ago), resumes N`` (markup escaped)."""
    run = report.run
    colour = {"completed": "green", "failed": "red", "running": "yellow"}.get(run.status, "dim")
    return (
        f"run {escape(run.run_id)}: [{colour}]{run.status}[/{colour}], started "
        f"{run.started_at:%Y-%m-%d %H:%M:%S %Z} ({ago(run.age_hours)}), resumes {run.resume_attempt_count}"
    )


def print_status(source: str, report: RunStatus | None, run_id: str | None = None) -> None:
    """One source's run: its tables (with why a table is not completed), failed chunks, the last error."""
    if report is None:
        console.print(f"no runs of {escape(source)}" + (f" with id {escape(run_id)}" if run_id else ""))
        return
    console.print(f"[bold]{escape(source)}[/bold] {run_line(report)}")
    table = Table("table", "status", "chunks", "failed", "rows", "rows/s", "attempts")
    for t in report.tables:
        table.add_row(
            escape(t.table),
            t.status,
            f"{t.chunks_done}/{t.chunks_total}",
            str(t.chunks_failed),
            f"{t.rows_copied:,}",
            f"{t.rows_per_second:,.0f}" if t.rows_per_second else "–",
            str(t.attempts),
        )
    console.print(table)
    for t in report.tables:
        if t.note:
            console.print(f"  {escape(t.table)} is {t.status}: {escape(t.note)}")
    if report.problems:
        failed = Table("chunk", "status", "attempts", "retry can help", "last error")
        for c in report.problems:
            failed.add_row(
                escape(f"{c['table_key']}#{c['chunk_index']:05d}"),
                c["status"],
                str(c["attempts"]),
                {True: "yes", False: "no: fix first", None: "–"}[c["error_retryable"]],
                escape(c["last_error"] or _running(c)),
            )
        console.print(failed)
    if report.run.last_error:
        console.print(f"last error: {escape(report.run.last_error)}")


def _running(chunk: dict[str, Any]) -> str:
    if chunk["stalled"]:
        return (
            f"(stalled: claimed by {chunk['worker']} at {chunk['started_at']:%Y-%m-%d %H:%M:%S %Z}, longer ago "
            "than chunk_timeout_seconds, and never reported: its worker is gone; run again to copy it)"
        )
    return f"(being copied by {chunk['worker']})"


def print_overview(rows: list[tuple[str, RunStatus | None, str | None]]) -> None:
    """Every configured source on one line: latest run, status, progress, rows, age."""
    table = Table("source", "latest run", "status", "progress", "rows", "started")
    for source, report, error in rows:
        if error is not None:
            table.add_row(escape(source), "–", "[red]cannot read[/red]", escape(error), "", "")
        elif report is None:
            table.add_row(escape(source), "–", "no runs", "", "", "")
        else:
            done, total = report.chunks_done, report.chunks_total
            table.add_row(
                escape(source),
                escape(report.run.run_id),
                report.run.status,
                f"{done}/{total} chunks ({percent(done, total)})",
                f"{report.rows_copied:,}",
                ago(report.run.age_hours),
            )
    console.print(table)


def print_history(source: str, reports: list[RunStatus]) -> None:
    if not reports:
        console.print(f"no runs of {escape(source)}")
        return
    table = Table("run", "status", "started", "finished", "resumes", "chunks done/total", "rows", "last error")
    for report in reports:
        run = report.run
        error = run.last_error or ""
        table.add_row(
            escape(run.run_id),
            run.status,
            f"{run.started_at:%Y-%m-%d %H:%M:%S %Z}",
            f"{run.finished_at:%Y-%m-%d %H:%M:%S %Z}" if run.finished_at else "–",
            str(run.resume_attempt_count),
            f"{report.chunks_done}/{report.chunks_total}",
            f"{report.rows_copied:,}",
            escape(error if len(error) <= 80 else error[:79] + "…"),
        )
    console.print(table)
