"""Progress read from the ledger: per run, per table, and the failed chunks with their errors.

The SQL here is the same the README documents for querying the ledger directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cm_datacopy import ledger

TABLES_SQL = """
SELECT t.table_key, t.status, t.chunks_total,
       count(*) FILTER (WHERE c.status = 'done')              AS chunks_done,
       count(*) FILTER (WHERE c.status = 'failed')            AS chunks_failed,
       coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_copied,
       coalesce(sum(c.attempts), 0)                           AS attempts
FROM migration_status.migration_table_status t
JOIN migration_status.migration_chunk_status c USING (run_id, table_key)
WHERE t.run_id = %s
GROUP BY t.table_key, t.status, t.chunks_total
ORDER BY t.table_key
"""

FAILED_SQL = """
SELECT table_key, chunk_index, attempts, last_error, worker, started_at
FROM migration_status.migration_chunk_status
WHERE run_id = %s AND status IN ('failed', 'running')
ORDER BY table_key, chunk_index
"""

RUNS_SQL = """
SELECT run_id, source, status, started_at, finished_at, resume_attempt_count, last_error
FROM migration_status.migration_runs
WHERE source = %s
ORDER BY started_at DESC
LIMIT %s
"""


@dataclass(frozen=True)
class RunStatus:
    run: dict[str, Any]
    tables: list[dict[str, Any]]
    open_chunks: list[dict[str, Any]]


def recent_runs(pg: psycopg.Connection[Any], source: str, limit: int = 5) -> list[dict[str, Any]]:
    if not ledger.exists(pg):
        return []
    with pg.cursor(row_factory=dict_row) as cur:
        cur.execute(RUNS_SQL, (source, limit))
        return cur.fetchall()


def run_status(pg: psycopg.Connection[Any], source: str, run_id: str | None = None) -> RunStatus | None:
    """The given run of the source, or its newest."""
    runs = recent_runs(pg, source, 1000 if run_id else 1)
    run = next((r for r in runs if run_id is None or r["run_id"] == run_id), None)
    if run is None:
        return None
    with pg.cursor(row_factory=dict_row) as cur:
        cur.execute(TABLES_SQL, (run["run_id"],))
        tables = cur.fetchall()
        cur.execute(FAILED_SQL, (run["run_id"],))
        open_chunks = cur.fetchall()
    return RunStatus(run, tables, open_chunks)
