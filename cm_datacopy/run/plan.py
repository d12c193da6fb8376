"""The plan of a run: each table's type plan, target check, profile and chunk ranges. Writes nothing.

``preview`` is ``cm-datacopy plan``; ``resume.start_or_resume`` stores a plan with a new run, so a
resume copies exactly the same chunks.

Chunk size: ``chunk_size`` rows, fewer when the ledger shows that the table copied too slowly for
that: a chunk must fit its runtime's limit (a Lambda invocation stops after 15 minutes), so the planner
takes the rows per second of the table's chunks in the source's latest run that copied any, and cuts
chunks of at most ``compute.chunk_max_seconds`` at that speed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import psycopg

from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.errors import PlanError
from cm_datacopy.postgres import target
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.ranges import Chunk, plan_chunks
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.boundaries import chunk_boundaries
from cm_datacopy.snowflake.catalog import describe_table, table_ref
from cm_datacopy.snowflake.profile import ColumnProfile, profile_table
from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.typeplan import ColumnPlan


@dataclass(frozen=True)
class TablePlan:
    table: TableConfig
    source_ref: str
    columns: list[ColumnPlan]
    chunks: list[Chunk]
    target_exists: bool
    profile: list[ColumnProfile] | None = None

    @property
    def key_target_column(self) -> str | None:
        return next((c.target_name for c in self.columns if c.source_name == self.table.chunk_key), None)


def plan_tables(
    cfg: SourceConfig,
    sf: sf_session.Session,
    pg: psycopg.Connection,
    snapshot_at: dt.datetime | None,
    *,
    profile_columns: bool = True,
    blocking_only: bool = False,
) -> list[TablePlan]:
    """Describe every table, check its target fits, profile it, and cut it into chunks. Writes nothing.

    A blocking profile fact (NUL bytes that would fail the copy) stops the plan before data moves.
    """
    plans, problems = [], []
    postgis = target.has_postgis(pg)
    measured = measured_rows_per_second(cfg, pg)
    for table in cfg.tables:
        ref = table_ref(cfg.snowflake, table)
        try:
            columns = describe_table(sf, cfg.snowflake, table, postgis=postgis)
            exists = target.check_fits(pg, table.target_schema, table.target_name, columns)
        except PlanError as exc:
            problems.append(str(exc))
            continue
        profiled = profile_table(cfg, sf, ref, columns, blocking_only=blocking_only) if profile_columns else None
        for col in profiled or []:
            problems += [f"{table.source}.{col.column}: {text}" for text in col.blocking]
        key = next((c for c in columns if c.source_name == table.chunk_key), None)
        rows_per_chunk = chunk_rows(cfg, table, measured.get(table.key))
        bounds = (
            chunk_boundaries(sf, Scan(ref, snapshot_at), key.source_name, key.key_kind or "int", rows_per_chunk)
            if key is not None
            else []
        )
        chunks = plan_chunks(table.key, key.source_name if key else None, key.key_kind if key else None, bounds)
        plans.append(TablePlan(table, ref, columns, chunks, exists, profiled))
    if problems:
        raise PlanError("\n".join(problems))
    return plans


def measured_rows_per_second(cfg: SourceConfig, pg: psycopg.Connection, runs: int = 5) -> dict[str, float]:
    """Rows per second of one chunk, per table, in the latest of the source's last ``runs`` runs that copied
    chunks of it (a chunk's seconds run from its claim to its commit)."""
    ledger = Ledger(cfg.postgres.ledger_schema)
    if not ledger.exists(pg):
        return {}
    rates: dict[str, float] = {}
    for run in ledger.runs(pg, cfg.name, runs):
        for row in ledger.table_progress(pg, run.run_id):
            if row["rows_per_second"] and row["table_key"] not in rates:
                rates[row["table_key"]] = float(row["rows_per_second"])
    return rates


def chunk_rows(cfg: SourceConfig, table: TableConfig, rows_per_second: float | None) -> int:
    """Rows per chunk: ``chunk_size``, or fewer if at the measured speed a chunk would outlast ``chunk_max_seconds``."""
    if not rows_per_second:
        return table.chunk_size
    return max(1, min(table.chunk_size, int(rows_per_second * cfg.compute.chunk_max_seconds)))


def preview(cfg: SourceConfig, *, profile_columns: bool = False) -> tuple[list[TablePlan], list[str]]:
    """The plan as ``run`` would make it, and the problems that would stop it. Writes nothing."""
    with sf_session.connect(cfg.snowflake) as sf, psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        try:
            return plan_tables(cfg, sf, pg, None, profile_columns=profile_columns), []
        except PlanError as exc:
            if not profile_columns:
                raise
            # Show the profile with the problems, so the user sees every fact at once.
            plans = plan_tables(cfg, sf, pg, None, profile_columns=False)
            for i, plan in enumerate(plans):
                plans[i] = replace(plan, profile=profile_table(cfg, sf, plan.source_ref, plan.columns))
            return plans, str(exc).splitlines()
