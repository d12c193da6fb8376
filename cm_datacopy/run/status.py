"""Progress and history from the ledger: per run, per table, and the chunks with problems.

The CLI prints these (``status``, ``history``) as tables or JSON; the SQL is in the ledger module,
and the README's diagnostic queries are the same ones, to run by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from cm_datacopy.postgres.ledger import Ledger, RunEntry


@dataclass(frozen=True)
class RunStatus:
    run: RunEntry
    tables: list[dict[str, Any]]
    problems: list[dict[str, Any]]


def run_status(pg: psycopg.Connection[Any], ledger: Ledger, source: str, run_id: str | None = None) -> RunStatus | None:
    """The given run of the source, or its latest; None if there is none."""
    if not ledger.exists(pg):
        return None
    run = ledger.get_run(pg, run_id) if run_id else ledger.latest_run(pg, source)
    if run is None or run.source != source:
        return None
    return RunStatus(run, ledger.table_progress(pg, run.run_id), ledger.problem_chunks(pg, run.run_id))


def history(pg: psycopg.Connection[Any], ledger: Ledger, source: str, limit: int = 20) -> list[RunEntry]:
    return ledger.runs(pg, source, limit) if ledger.exists(pg) else []
