"""The resume rule, in one place, and the start of a run.

Kept from the system this replaces ("resume the newest unfinished run", ``resume_max_age`` 12 h,
``no_resume`` false by default, ``resume_attempt_count``), made exact: only the source's **latest**
run can be resumed, and only while it is open (running or failed), younger than
``resume_max_age_hours`` (by the database's clock) and planned under the same configuration.
Starting a new run closes every open run of the source as ``superseded`` in the same transaction,
so an older run is never resumed after a newer one — by ``cm-datacopy run``, the Dagster planning
step or the auto-resume sensor, which all decide with ``decide`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from cm_datacopy.config import SourceConfig
from cm_datacopy.postgres import target
from cm_datacopy.postgres.ledger import Ledger, RunEntry, TableEntry, new_run_id
from cm_datacopy.run import publish, selftest
from cm_datacopy.run.plan import plan_tables
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.catalog import snapshot_time, table_ref


@dataclass(frozen=True)
class ResumeDecision:
    run: RunEntry | None  # the run to resume; None: start a new one
    reason: str


def decide(cfg: SourceConfig, latest: RunEntry | None, *, no_resume: bool, automatic: bool = False) -> ResumeDecision:
    """Resume the source's latest run, or say why a new run starts.

    ``automatic``: the auto-resume sensor asks. A run started with ``no_resume`` had resume disabled
    when it was started (the replaced system's ``{"no_resume": true}``): it is resumed only by hand.
    """
    if latest is None:
        return ResumeDecision(None, "starting a new run")
    closes = f"; run {latest.run_id} is closed as superseded" if latest.is_open else ""
    if no_resume:
        return ResumeDecision(None, "starting a new run (no_resume)" + closes)
    if automatic and latest.no_resume:
        return ResumeDecision(None, f"run {latest.run_id} was started with no_resume: it is resumed only by hand")
    if not latest.is_open:
        return ResumeDecision(None, f"starting a new run: the latest run {latest.run_id} is {latest.status}")
    if latest.age_hours > cfg.resume_max_age_hours:
        return ResumeDecision(
            None,
            f"starting a new run: run {latest.run_id} started {latest.age_hours:.1f} h ago, older than "
            f"resume_max_age ({cfg.resume_max_age_hours:g} h){closes}",
        )
    if latest.config_fingerprint != cfg.fingerprint():
        return ResumeDecision(None, f"starting a new run: the configuration changed since run {latest.run_id}{closes}")
    return ResumeDecision(latest, f"resuming run {latest.run_id}")


@dataclass(frozen=True)
class RunStart:
    run_id: str
    resumed: bool
    resume_attempt_count: int
    reason: str


def start_or_resume(cfg: SourceConfig, pg: psycopg.Connection[Any], *, no_resume: bool | None = None) -> RunStart:
    """Apply the rule: resume the latest run, or plan and store a new one. The caller holds the source lock."""
    ledger = Ledger(cfg.postgres.ledger_schema)
    # Read first (a schema holding another system's tables is refused here, before any write); the
    # ledger is created only once the plan holds: a config or plan error writes nothing.
    has_ledger = ledger.exists(pg)
    if has_ledger:
        ledger.ensure(pg)
    latest = ledger.latest_run(pg, cfg.name) if has_ledger else None
    decision = decide(cfg, latest, no_resume=cfg.no_resume if no_resume is None else no_resume)
    if decision.run is not None:
        run_id = decision.run.run_id
        resumed = ledger.table_entries(pg, run_id)
        with sf_session.connect(cfg.snowflake, f"cm_datacopy source={cfg.name} run={run_id} step=selftest") as sf:
            selftest.check(sf, pg, [col for entry in resumed for col in entry.columns], ledger)
        count = ledger.mark_resumed(pg, run_id)
        publish.ensure_shadows(pg, resumed, ledger)
        return RunStart(run_id, True, count, f"{decision.reason} (resume #{count})")

    run_id = new_run_id(cfg.name)
    with sf_session.connect(cfg.snowflake, f"cm_datacopy source={cfg.name} run={run_id} step=plan") as sf:
        snapshot_at = (
            snapshot_time(sf, [table_ref(cfg.snowflake, t) for t in cfg.tables]) if cfg.snowflake.time_travel else None
        )
        plans = plan_tables(cfg, sf, pg, snapshot_at, profile_columns=cfg.nul_bytes == "fail", blocking_only=True)
        selftest.check(sf, pg, [col for plan in plans for col in plan.columns], ledger)
    ledger.ensure(pg)
    for plan in plans:
        target.ensure_table(
            pg,
            plan.table.target_schema,
            plan.table.target_name,
            plan.columns,
            key_index=plan.key_target_column if plan.table.mode == "in_place" else None,
        )
    entries = [
        (
            TableEntry(
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
    no_resume_flag = cfg.no_resume if no_resume is None else no_resume
    ledger.create_run(pg, run_id, cfg.name, cfg.fingerprint(), snapshot_at, no_resume_flag, entries)
    publish.drop_stale_shadows(pg, ledger, cfg.name, run_id)
    publish.ensure_shadows(pg, [entry for entry, _ in entries], ledger)
    return RunStart(run_id, False, 0, decision.reason)
