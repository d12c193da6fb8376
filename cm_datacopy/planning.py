"""From config to a stored run: the type plan and chunk plan of every table, or a resumed run.

``preview`` reads both databases and writes nothing (``cm-datacopy plan``); ``start_or_resume``
applies the seed's resume rules and stores the plan, so a resume copies exactly the same chunks.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from cm_datacopy import ledger, publish, source, target
from cm_datacopy.chunks import Chunk, plan_chunks
from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.errors import PlanError
from cm_datacopy.profile import ColumnProfile, profile_table
from cm_datacopy.typeplan import ColumnPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TablePlan:
    table: TableConfig
    source_ref: str
    columns: list[ColumnPlan]
    chunks: list[Chunk]
    target_exists: bool
    profile: list[ColumnProfile] | None = None


def plan_tables(
    cfg: SourceConfig,
    sf: Any,
    pg: psycopg.Connection[Any],
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
    for table in cfg.tables:
        ref = source.table_ref(cfg.snowflake, table)
        try:
            columns = source.describe_table(sf, cfg.snowflake, table, postgis=postgis)
            exists = target.check_fits(pg, table.target_schema, table.target_name, columns)
        except PlanError as exc:
            problems.append(str(exc))
            continue
        profiled = profile_table(cfg, sf, ref, columns, blocking_only=blocking_only) if profile_columns else None
        for col in profiled or []:
            problems += [f"{table.source}.{col.column}: {text}" for text in col.blocking]
        key = next((c for c in columns if c.source_name == table.chunk_key), None)
        bounds = (
            source.chunk_boundaries(sf, ref, key.source_name, table.chunk_size, snapshot_at) if key is not None else []
        )
        chunks = plan_chunks(table.key, key.source_name if key else None, key.key_kind if key else None, bounds)
        plans.append(TablePlan(table, ref, columns, chunks, exists, profiled))
    if problems:
        raise PlanError("\n".join(problems))
    return plans


def _snapshot_time(cfg: SourceConfig, sf: Any) -> dt.datetime | None:
    """The run's read point (Time Travel), or None where the source cannot read at a point in time."""
    if not cfg.snowflake.time_travel:
        return None
    cur = sf.cursor()
    cur.execute("SELECT CURRENT_TIMESTAMP()")
    now = cur.fetchone()[0]
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    for table in cfg.tables:
        if not source.supports_time_travel(sf, source.table_ref(cfg.snowflake, table), now):
            return None
    return now


def preview(cfg: SourceConfig, *, profile_columns: bool = False) -> tuple[list[TablePlan], list[str]]:
    """The plan as ``run`` would make it, and the problems that would stop it. Writes nothing."""
    with source.connect(cfg.snowflake) as sf, psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
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


@dataclass(frozen=True)
class RunStart:
    run_id: str
    resumed: bool
    resume_attempt_count: int
    reason: str


def start_or_resume(cfg: SourceConfig, pg: psycopg.Connection[Any], *, no_resume: bool | None = None) -> RunStart:
    """The seed's rules: resume the newest unfinished run younger than ``resume_max_age_hours``,
    unless ``no_resume``; otherwise plan and store a new run. The caller holds the source lock."""
    # The ledger is created only once the plan holds: a config or plan error writes nothing.
    has_ledger = ledger.exists(pg)
    if has_ledger:
        ledger.ensure_schema(pg)
    no_resume = cfg.no_resume if no_resume is None else no_resume
    candidate = None if no_resume or not has_ledger else ledger.find_resumable(pg, cfg.name, cfg.resume_max_age_hours)
    if candidate is not None and candidate.config_fingerprint == cfg.fingerprint():
        count = ledger.mark_resumed(pg, candidate.run_id)
        publish.ensure_shadows(
            pg, ledger.table_entries(pg, candidate.run_id), ledger.published_tables(pg, candidate.run_id)
        )
        return RunStart(candidate.run_id, True, count, f"resuming run {candidate.run_id} (resume #{count})")
    if no_resume:
        reason = "starting a new run (no_resume)"
    elif candidate is not None:
        reason = f"starting a new run: the configuration changed since run {candidate.run_id}"
    else:
        latest = ledger.latest_run(pg, cfg.name) if has_ledger else None
        if latest is not None and latest.status != "completed":
            reason = (
                f"starting a new run: run {latest.run_id} is older than resume_max_age ({cfg.resume_max_age_hours:g} h)"
            )
        else:
            reason = "starting a new run"
    run_id = ledger.new_run_id(cfg.name)
    with source.connect(cfg.snowflake) as sf:
        snapshot_at = _snapshot_time(cfg, sf)
        plans = plan_tables(cfg, sf, pg, snapshot_at, profile_columns=cfg.nul_bytes == "fail", blocking_only=True)
    ledger.ensure_schema(pg)
    for plan in plans:
        key = next((c.target_name for c in plan.columns if c.source_name == plan.table.chunk_key), None)
        target.ensure_table(
            pg,
            plan.table.target_schema,
            plan.table.target_name,
            plan.columns,
            key_index=key if plan.table.mode == "in_place" else None,
        )
    entries = [
        (
            ledger.TableEntry(
                run_id=run_id,
                table_key=plan.table.key,
                source_table=plan.source_ref,
                target_schema=plan.table.target_schema,
                target_table=plan.table.target_name,
                load_schema=plan.table.target_schema,
                load_table=(
                    publish.shadow_name(plan.table.target_name, run_id)
                    if plan.table.mode == "publish"
                    else plan.table.target_name
                ),
                columns=plan.columns,
                mode=plan.table.mode,
            ),
            plan.chunks,
        )
        for plan in plans
    ]
    ledger.create_run(pg, cfg.name, cfg.fingerprint(), snapshot_at, no_resume, entries)
    publish.drop_stale_shadows(pg, cfg.name, run_id)
    publish.ensure_shadows(pg, [entry for entry, _ in entries], set())
    return RunStart(run_id, False, 0, reason)
