"""Jobs: plan a source (the seed's first steps) and copy a table's chunks.

Planning is a job, not an asset: it does not produce data, it decides which run the chunks belong
to. It holds the source lock (as ``cm-datacopy run`` does), so it refuses to plan while a CLI run of
the same source is copying, and it refuses to plan while Dagster runs of the source are still
copying chunks (a new plan would remove the partitions they are materializing).
"""

import dagster as dg
import psycopg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter

from cm_datacopy.config import SourceConfig
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.assets import pool_name
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.run.check import check_source
from cm_datacopy.run.resume import start_or_resume


class PlanConfig(dg.Config):
    """Run config of a planning job; unset fields take the config file's values."""

    no_resume: bool | None = None
    resume_max_age_hours: float | None = None


def plan_job_name(source: str) -> str:
    return f"plan_{source}"


def copy_job_name(source: str, table_asset_key: dg.AssetKey) -> str:
    return "copy__" + "__".join(table_asset_key.path)


def active_copy_runs(instance: dg.DagsterInstance, source: str) -> list[str]:
    """Ids of queued or running Dagster runs that materialize a table of ``source``."""
    runs = instance.get_runs(RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES))
    return [
        r.run_id for r in runs if r.asset_selection and any(k.path and k.path[0] == source for k in r.asset_selection)
    ]


def plan_source_job(cfg: SourceConfig) -> dg.JobDefinition:
    source_name = cfg.name

    @dg.op(name=f"plan_{source_name}_run", tags={"cm_datacopy/source": source_name})
    def plan(context: dg.OpExecutionContext, config: PlanConfig, datacopy: DatacopyConfig) -> dg.Output[str]:
        # 1. Validate the config (raises with file, field and fix).
        try:
            source_cfg = datacopy.source(source_name)
        except DatacopyError as exc:
            raise dg.Failure(description=f"config: {exc}") from None
        overrides = {k: v for k, v in config.model_dump().items() if v is not None}
        if "resume_max_age_hours" in overrides:
            source_cfg = source_cfg.model_copy(update={"resume_max_age_hours": overrides["resume_max_age_hours"]})
        context.log.info(f"config ok: {len(source_cfg.tables)} tables ({datacopy.resolved_path})")
        # 2. Test the connections.
        problems = check_source(source_cfg)
        if problems:
            raise dg.Failure(description="connection test failed:\n" + "\n".join(problems))
        context.log.info("connections ok: Snowflake and PostgreSQL reachable, tables readable")
        # 3. Create or resume the migration run, under the source lock.
        busy = [r for r in active_copy_runs(context.instance, source_name) if r != context.run_id]
        if busy:
            raise dg.Failure(
                description=f"Dagster runs {', '.join(busy[:5])} are still copying chunks of {source_name}: "
                "wait for them (or cancel them), then plan again"
            )
        try:
            with SourceLock(source_cfg), psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
                start = start_or_resume(source_cfg, pg, no_resume=overrides.get("no_resume"))
                context.log.info(f"{source_name}: {start.reason}")
                # 4. Register the chunk plan as partitions; a resumed run keeps its keys.
                registered = partitions.register_run(context.instance, source_cfg, pg, start.run_id)
        except DatacopyError as exc:
            raise dg.Failure(description=str(exc)) from None
        # 5. The source's pool limit is its `workers`: how many chunks copy at once.
        context.instance.event_log_storage.set_concurrency_slots(pool_name(source_name), source_cfg.workers)
        for reg in registered:
            context.log.info(
                f"{reg.table_key}: {reg.total} chunks ({reg.added} partitions added, {reg.removed} stale removed)"
            )
        return dg.Output(
            start.run_id,
            metadata={
                "migration_run_id": start.run_id,
                "resumed": start.resumed,
                "resume_attempt_count": start.resume_attempt_count,
                "reason": start.reason,
                "chunks": sum(r.total for r in registered),
                "pool": pool_name(source_name),
                "pool_limit": source_cfg.workers,
            },
        )

    @dg.job(
        name=plan_job_name(source_name),
        description=f"Validate {source_name}'s config, test connections, create or resume its migration run and "
        "register the chunk plan as partitions.",
        tags={"cm_datacopy/source": source_name},
    )
    def _job() -> None:
        plan()

    return _job


def copy_table_job(source: str, asset: dg.AssetsDefinition) -> UnresolvedAssetJobDefinition:
    """The job the auto-resume sensor requests a chunk through (one job per partitions definition)."""
    return dg.define_asset_job(
        name=copy_job_name(source, asset.key),
        selection=dg.AssetSelection.assets(asset.key),
        tags={"cm_datacopy/source": source},
    )
