"""Jobs per source: ``copy_<source>`` copies the whole source; ``plan_<source>`` only plans it.

``copy_<source>`` is what ``cm-datacopy run <source>`` does, as a Dagster run (and what a Step
Functions execution of the replaced system did): validate the config, test the connections, then,
holding the source's lock, resume the latest migration run or plan a new one (the one resume rule),
register its chunks as the tables' partitions, copy every chunk not done yet through the source's
dispatcher (``workers`` in flight), publish the publish-mode tables, and record the run's end. Each
chunk shows up as a materialization and a check evaluation of its table's asset, each published
table as a materialization of its published asset. Launched again, it copies only what is missing:
"missing only" for a whole source in one click.

``plan_<source>`` stops after registering the chunks, for those who copy through backfills of the
table assets. A new plan replaces the tables' partitions, so it is refused while other runs of the
source are queued or copying; a resumed run keeps its keys.

``copy_chunks__<table asset>``: the table's asset alone, what the auto-resume sensor requests.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from cm_datacopy.chunk import ChunkTask
from cm_datacopy.chunk.task import classify
from cm_datacopy.config import SourceConfig
from cm_datacopy.dagster_defs import partitions, tags
from cm_datacopy.dagster_defs.instance import reuse_storage_connections
from cm_datacopy.dagster_defs.publish import published_asset_key, published_metadata
from cm_datacopy.dagster_defs.reporting import ChunkReporter, chunks_failure, error_failure, step_failure
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.dagster_defs.steps import (
    copy_tasks,
    ensure_pool_limit,
    load_source,
    pool_name,
    source_lock,
)
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.check import check_source
from cm_datacopy.run.publish import publish_table
from cm_datacopy.run.resume import RunStart, decide, start_or_resume

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class SourceRunConfig(dg.Config):
    """Run config of ``copy_<source>`` and ``plan_<source>``; unset fields take the config file's values."""

    no_resume: bool | None = Field(
        default=None, description="true: plan a new migration run even if the latest one could be resumed"
    )
    resume_max_age_hours: float | None = Field(
        default=None, gt=0, description="resume the latest run only if it started less than this many hours ago"
    )


def copy_job_name(source: str) -> str:
    return f"copy_{source}"


def plan_job_name(source: str) -> str:
    return f"plan_{source}"


def chunks_job_name(table_asset_key: dg.AssetKey) -> str:
    return "copy_chunks__" + "__".join(table_asset_key.path)


def _checks(cfg: SourceConfig) -> tuple[dg.OpDefinition, dg.OpDefinition]:
    """The first two states of a source's run: its config holds, its databases answer."""
    source_name = cfg.name

    @dg.op(name=f"{source_name}_validate_config", out=dg.Out(dg.Nothing), tags={tags.SOURCE: source_name})
    def validate(context: dg.OpExecutionContext, datacopy: DatacopyConfig) -> None:
        source_cfg = load_source(datacopy, source_name)
        context.log.info(f"config ok: {len(source_cfg.tables)} tables ({datacopy.resolved_path})")

    @dg.op(
        name=f"{source_name}_test_connections",
        ins={"config_ok": dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing),
        tags={tags.SOURCE: source_name},
    )
    def test_connections(context: dg.OpExecutionContext, datacopy: DatacopyConfig) -> None:
        problems = check_source(load_source(datacopy, source_name))
        if problems:
            raise step_failure("connection test failed:\n" + "\n".join(problems), retryable=True)
        context.log.info("connections ok: Snowflake and PostgreSQL reachable, tables readable")

    return validate, test_connections


def _copying_runs(instance: dg.DagsterInstance, cfg: SourceConfig, own_run_id: str) -> list[str]:
    """Other queued or running Dagster runs that copy chunks of ``cfg``'s tables."""
    tables = {partitions.table_asset_key(cfg.name, t) for t in cfg.tables}
    jobs = {copy_job_name(cfg.name), *(chunks_job_name(key) for key in tables)}
    found = []
    for run in instance.get_runs(dg.RunsFilter(statuses=ACTIVE)):
        copies = bool(tables & set(run.asset_selection or ())) or run.job_name in jobs
        if copies and run.run_id != own_run_id:
            found.append(run.run_id)
    return found


def _start(
    context: dg.OpExecutionContext, cfg: SourceConfig, pg: psycopg.Connection[Any], config: SourceRunConfig
) -> tuple[RunStart, dict[tuple[str, int], str]]:
    """Resume or plan (the caller holds the source's lock) and register the chunks as partitions.

    A run started by the auto-resume sensor only resumes: if the rule says "new run", it fails (final).
    """
    ledger = Ledger(cfg.postgres.ledger_schema)
    automatic = tags.resume_attempt(context.run.tags) > 0
    try:
        latest = ledger.latest_run(pg, cfg.name) if ledger.exists(pg) else None
        no_resume = cfg.no_resume if config.no_resume is None else config.no_resume
        decision = decide(cfg, latest, no_resume=no_resume, automatic=automatic)
        if decision.run is None and automatic:
            raise step_failure(f"automatic resume refused: {decision.reason}", retryable=False)
        busy = _copying_runs(context.instance, cfg, context.run_id)
        if decision.run is None and busy:
            raise step_failure(
                f"{decision.reason}, but Dagster runs {', '.join(busy[:5])} of {cfg.name} are queued or copying "
                "chunks of the current plan: wait for them (or cancel them), then launch again",
                retryable=False,
            )
        start = start_or_resume(cfg, pg, no_resume=config.no_resume)
        keys = partitions.run_keys(ledger, pg, start.run_id)
    except DatacopyError as exc:
        raise error_failure(exc, f"planning {cfg.name}") from None
    context.log.info(f"{cfg.name}: {start.reason}")
    ensure_pool_limit(context.instance, cfg.name)  # before any backfill of these chunks is queued
    for reg in partitions.register_run(context.instance, cfg, keys):
        context.log.info(
            f"{reg.table_key}: {reg.total} chunks ({reg.added} partitions added, {reg.removed} stale removed)"
        )
    return start, keys


def source_jobs(cfg: SourceConfig) -> list[dg.JobDefinition]:
    """``copy_<source>`` and ``plan_<source>``; they share their first two steps."""
    checks = _checks(cfg)
    return [copy_source_job(cfg, *checks), plan_source_job(cfg, *checks)]


def plan_source_job(
    cfg: SourceConfig, validate: dg.OpDefinition, test_connections: dg.OpDefinition
) -> dg.JobDefinition:
    source_name = cfg.name

    @dg.op(
        name=f"{source_name}_plan",
        ins={"connections_ok": dg.In(dg.Nothing)},
        pool=pool_name(source_name),
        tags={tags.SOURCE: source_name},
    )
    def plan(context: dg.OpExecutionContext, config: SourceRunConfig, datacopy: DatacopyConfig) -> dg.Output[str]:
        source_cfg = load_source(datacopy, source_name, resume_max_age_hours=config.resume_max_age_hours)
        with source_lock(source_cfg), psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            start, keys = _start(context, source_cfg, pg, config)
        return dg.Output(
            start.run_id,
            metadata={
                "migration run": start.run_id,
                "resumed": start.resumed,
                "resume attempt count": start.resume_attempt_count,
                "reason": start.reason,
                "chunks": len(keys),
            },
        )

    @dg.job(
        name=plan_job_name(source_name),
        description=f"Validate {source_name}'s config, test its connections, resume its latest migration run or "
        "plan a new one, and register the chunks as the tables' partitions (then backfill the tables).",
        tags={tags.SOURCE: source_name},
    )
    def _job() -> None:
        plan(test_connections(validate()))

    return _job


def copy_source_job(
    cfg: SourceConfig, validate: dg.OpDefinition, test_connections: dg.OpDefinition
) -> dg.JobDefinition:
    source_name = cfg.name
    asset_keys = {t.key: partitions.table_asset_key(source_name, t) for t in cfg.tables}

    @dg.op(
        name=f"{source_name}_copy",
        ins={"connections_ok": dg.In(dg.Nothing)},
        out={},
        pool=pool_name(source_name),
        tags={tags.SOURCE: source_name},
    )
    def copy(context: dg.OpExecutionContext, config: SourceRunConfig, datacopy: DatacopyConfig) -> Iterator[Any]:
        source_cfg = load_source(datacopy, source_name, resume_max_age_hours=config.resume_max_age_hours)
        reuse_storage_connections(context.instance)
        ledger = Ledger(source_cfg.postgres.ledger_schema)
        with source_lock(source_cfg) as lock, psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            start, keys = _start(context, source_cfg, pg, config)
            chunks = {(c.table_key, c.index): c for c in ledger.chunks(pg, start.run_id)}
            todo = ledger.chunks(pg, start.run_id, open_only=True)
            context.log.info(
                f"{len(todo)} of {len(chunks)} chunks to copy, {source_cfg.workers} in flight "
                f"({source_cfg.compute.kind})"
            )
            reporter = ChunkReporter(
                instance=context.instance,
                pg=pg,
                ledger=ledger,
                run_id=start.run_id,
                keys=keys,
                chunks=chunks,
                asset_keys=asset_keys,
                checked=source_cfg.verify,
            )
            tasks = [ChunkTask(source_name, start.run_id, c.table_key, c.index) for c in todo]
            yield from copy_tasks(context, source_cfg, tasks, reporter, lock)
            if lock.lost.is_set():
                raise step_failure(
                    f"lost the lock of source {source_name}; stopped (the run's status is left to whoever holds it)",
                    retryable=True,
                )
            refusals: list[str] = []
            yield from _publish(source_cfg, ledger, pg, start.run_id, refusals)
            status = ledger.finish_run(pg, start.run_id, "; ".join(refusals) or None)
        context.log.info(f"migration run {start.run_id}: {status}")
        failure = chunks_failure(reporter.failures, len(todo))
        if failure is not None:
            raise failure
        if refusals:
            raise step_failure("; ".join(refusals), retryable=False)

    @dg.job(
        name=copy_job_name(source_name),
        description=f"Copy source {source_name} to the end: validate its config, test its connections, resume its "
        "latest migration run or plan a new one, copy every chunk not done yet, publish, record the end. "
        "Launch it again to copy only what is missing.",
        tags={tags.SOURCE: source_name},
    )
    def _job() -> None:
        copy(test_connections(validate()))

    return _job


def _publish(
    cfg: SourceConfig, ledger: Ledger, pg: psycopg.Connection[Any], run_id: str, refusals: list[str]
) -> Iterator[dg.AssetMaterialization]:
    """Each table whose chunks are all done: publish mode swaps its shadow in; either way its published
    asset records that the table is complete. A refused publish is added to ``refusals`` (final)."""
    open_tables = {c.table_key for c in ledger.chunks(pg, run_id, open_only=True)}
    for table in cfg.tables:
        if table.key in open_tables:
            continue
        try:
            result = publish_table(cfg, pg, run_id, table.key)
        except (DatacopyError, psycopg.Error) as exc:
            if isinstance(exc, psycopg.OperationalError) and pg.broken:
                raise error_failure(exc, f"publishing {table.key}") from None
            refusals.append(classify(exc, f"publishing {table.key}")[0])
            continue
        yield dg.AssetMaterialization(
            asset_key=published_asset_key(cfg.name, table),
            metadata=published_metadata(ledger, pg, run_id, table, result),
        )


def copy_chunks_job(source: str, asset_key: dg.AssetKey) -> Any:  # an asset job, resolved by Definitions
    """A table's asset alone (one job per partitions definition): the auto-resume sensor requests its chunks."""
    return dg.define_asset_job(
        name=chunks_job_name(asset_key),
        selection=dg.AssetSelection.assets(asset_key),
        tags={tags.SOURCE: source},
        description=f"Copy chunks of {'/'.join(asset_key.path)} (the auto-resume sensor's requests).",
    )
