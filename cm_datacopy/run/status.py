"""Progress and history from the ledger: per run, per table, the chunks with problems, and why.

The CLI prints these (``status``, ``history``) as tables or as JSON (``to_json``: the keys are
documented in docs/commands.md and tested); the SQL is in the ledger module, and the diagnostic
queries in docs/monitoring.md are the same ones, to run by hand.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg

from cm_datacopy.postgres.ledger import Ledger, RunEntry


@dataclass(frozen=True)
class TableStatus:
    """One table of a run, with a note saying why it is not completed (None when it is)."""

    table: str
    status: str
    mode: str
    chunks_total: int
    chunks_done: int
    chunks_failed: int
    chunks_running: int
    chunks_verified: int
    rows_copied: int
    attempts: int
    rows_per_second: float | None
    published_at: dt.datetime | None
    published_rows: int | None
    note: str | None


@dataclass(frozen=True)
class RunStatus:
    run: RunEntry
    tables: list[TableStatus]
    problems: list[dict[str, Any]]

    @property
    def chunks_total(self) -> int:
        return sum(t.chunks_total for t in self.tables)

    @property
    def chunks_done(self) -> int:
        return sum(t.chunks_done for t in self.tables)

    @property
    def chunks_failed(self) -> int:
        return sum(t.chunks_failed for t in self.tables)

    @property
    def rows_copied(self) -> int:
        return sum(t.rows_copied for t in self.tables)


def explain(row: dict[str, Any], run: RunEntry, stalled: int = 0) -> str | None:
    """Why a table of a run is not completed, in words a user can act on (``stalled``: its running chunks
    whose worker is gone)."""
    done, total, failed = row["chunks_done"], row["chunks_total"], row["chunks_failed"]
    publish_pending = row["mode"] == "publish" and row["published_at"] is None
    if done == total and not publish_pending:
        return None
    if run.status == "superseded":
        return f"superseded by run {run.superseded_by}: its chunks are not resumed"
    if done == total:
        refused = f"publish {row['table_key']}" in (run.last_error or "")
        if refused:
            return "all chunks copied and verified; not published: the swap was refused (see the last error)"
        if run.status == "running":
            return "all chunks copied; publishing"
        return "all chunks copied; not published yet: run again to publish"
    left = total - done
    if failed:
        return f"{failed} of {left} chunks left failed (see below); run again to retry them"
    if stalled:
        return (
            f"{left} chunks left; {stalled} stalled: claimed longer ago than chunk_timeout_seconds and never "
            "reported (the worker was killed, or a Lambda/ECS task ended without a report); run again, or let "
            "the auto-resume sensor, copy them again"
        )
    if run.status == "running":
        return f"{left} chunks left; {row['chunks_running']} being copied"
    return f"{left} chunks left; run again to resume"


def _table(row: dict[str, Any], run: RunEntry, stalled: int) -> TableStatus:
    rate = row["rows_per_second"]
    return TableStatus(
        table=row["table_key"],
        status=row["status"],
        mode=row["mode"],
        chunks_total=row["chunks_total"],
        chunks_done=row["chunks_done"],
        chunks_failed=row["chunks_failed"],
        chunks_running=row["chunks_running"],
        chunks_verified=row["chunks_verified"],
        rows_copied=int(row["rows_copied"]),
        attempts=int(row["attempts"]),
        rows_per_second=None if rate is None else float(rate),
        published_at=row["published_at"],
        published_rows=row["published_rows"],
        note=explain(row, run, stalled),
    )


def status_of_run(
    pg: psycopg.Connection[Any], ledger: Ledger, run: RunEntry, stalled_after: float | None = None
) -> RunStatus:
    """``stalled_after``: the source's ``chunk_timeout_seconds``. A chunk claimed longer ago than that and
    still running has no live transaction (PostgreSQL ends it, and a newer attempt fences it off): its
    worker is gone, and only a resume copies it."""
    problems = ledger.problem_chunks(pg, run.run_id, stalled_after)
    stalled = Counter(c["table_key"] for c in problems if c["stalled"])
    tables = [_table(row, run, stalled.get(row["table_key"], 0)) for row in ledger.table_progress(pg, run.run_id)]
    return RunStatus(run, tables, problems)


def run_status(
    pg: psycopg.Connection[Any],
    ledger: Ledger,
    source: str,
    run_id: str | None = None,
    stalled_after: float | None = None,
) -> RunStatus | None:
    """The given run of the source, or its latest; None if there is none."""
    if not ledger.exists(pg):
        return None
    run = ledger.get_run(pg, run_id) if run_id else ledger.latest_run(pg, source)
    if run is None or run.source != source:
        return None
    return status_of_run(pg, ledger, run, stalled_after)


def history(
    pg: psycopg.Connection[Any], ledger: Ledger, source: str, limit: int = 20, stalled_after: float | None = None
) -> list[RunStatus]:
    """The source's runs, newest first, each with its tables' progress."""
    if not ledger.exists(pg):
        return []
    return [status_of_run(pg, ledger, run, stalled_after) for run in ledger.runs(pg, source, limit)]


# ---- JSON (documented in docs/commands.md; keys are added, never renamed or removed) ---------------


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def run_json(run: RunEntry) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "started_at": _time(run.started_at),
        "finished_at": _time(run.finished_at),
        "age_hours": round(float(run.age_hours), 3),
        "resume_attempt_count": run.resume_attempt_count,
        "no_resume": run.no_resume,
        "snapshot_at": _time(run.snapshot_at),
        "superseded_by": run.superseded_by,
        "last_error": run.last_error,
    }


def to_json(source: str, report: RunStatus | None, error: str | None = None) -> dict[str, Any]:
    """A source's status as JSON: its latest (or chosen) run, its tables and its problem chunks."""
    tables = report.tables if report else []
    return {
        "source": source,
        "error": error,
        "run": run_json(report.run) if report else None,
        "chunks_total": report.chunks_total if report else 0,
        "chunks_done": report.chunks_done if report else 0,
        "chunks_failed": report.chunks_failed if report else 0,
        "rows_copied": report.rows_copied if report else 0,
        "tables": [
            {
                "table": t.table,
                "status": t.status,
                "mode": t.mode,
                "chunks_total": t.chunks_total,
                "chunks_done": t.chunks_done,
                "chunks_failed": t.chunks_failed,
                "chunks_running": t.chunks_running,
                "chunks_verified": t.chunks_verified,
                "rows_copied": t.rows_copied,
                "attempts": t.attempts,
                "rows_per_second": None if t.rows_per_second is None else round(t.rows_per_second, 1),
                "published_at": _time(t.published_at),
                "published_rows": t.published_rows,
                "note": t.note,
            }
            for t in tables
        ],
        "problem_chunks": [
            {
                "table": c["table_key"],
                "chunk": c["chunk_index"],
                "status": c["status"],
                "attempts": c["attempts"],
                "retryable": c["error_retryable"],
                "last_error": c["last_error"],
                "worker": c["worker"],
                "started_at": _time(c["started_at"]),
                "stalled": c["stalled"],
            }
            for c in (report.problems if report else [])
        ],
    }
