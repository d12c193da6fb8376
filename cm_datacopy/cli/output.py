"""What the CLI prints: one console for results (stdout), one for errors (stderr), and the reports."""

from __future__ import annotations

from typing import Any

import psycopg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.status import run_status

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_status(pg: psycopg.Connection[Any], ledger: Ledger, source: str, run_id: str | None = None) -> None:
    report = run_status(pg, ledger, source, run_id)
    if report is None:
        console.print(f"no runs of {source}" + (f" with id {run_id}" if run_id else ""))
        return
    run = report.run
    console.print(
        f"[bold]{source}[/bold] run {run.run_id}: {run.status}, "
        f"started {run.started_at:%Y-%m-%d %H:%M:%S %Z}, resumes {run.resume_attempt_count}"
    )
    table = Table("table", "status", "chunks done/total", "failed", "rows", "attempts")
    for t in report.tables:
        table.add_row(
            escape(t["table_key"]),
            t["status"],
            f"{t['chunks_done']}/{t['chunks_total']}",
            str(t["chunks_failed"]),
            f"{t['rows_copied']:,}",
            str(t["attempts"]),
        )
    console.print(table)
    if report.problems:
        failed = Table("chunk", "attempts", "last error")
        for c in report.problems:
            failed.add_row(
                escape(f"{c['table_key']}#{c['chunk_index']:05d}"),
                str(c["attempts"]),
                escape(c["last_error"] or "(running)"),
            )
        console.print(failed)
