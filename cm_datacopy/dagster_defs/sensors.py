"""Auto-resume: when a run that copies chunks fails, request its failed and missing chunks again.

It replaces the seed's Step Functions resume loop, with the same rules: only while the migration
run is younger than ``resume_max_age_hours``, never when the run was planned with ``no_resume``,
and at most ``max_resume_attempts`` times in a row for a chunk (counted in the run tag
``cm_datacopy/resume_attempt``, which each resumed run carries one higher; the ledger's
``resume_attempt_count`` counts every automatic resume of the migration run).

It watches every run of the deployment, because runs launched from the UI and from backfills run as
``__ASSET_JOB`` and would be missed by ``monitored_jobs``; it keeps those that materialize one of
our tables (``run.asset_selection``). It leaves alone runs that Dagster's own run retries will
retry (tag ``dagster/will_retry``), so the two never double up.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg
import psycopg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from cm_datacopy.config import SourceConfig
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.resume import decide

log = logging.getLogger(__name__)

SENSOR_NAME = "cm_datacopy_auto_resume"
RESUME_ATTEMPT_TAG = "cm_datacopy/resume_attempt"
RESUMED_FROM_TAG = "cm_datacopy/resumed_from"
MIGRATION_RUN_TAG = "cm_datacopy/migration_run_id"
WILL_RETRY_TAG = "dagster/will_retry"


@dataclass(frozen=True)
class Target:
    """What the sensor needs to know about one table asset."""

    source: str
    table_key: str
    partitions_def_name: str
    job_name: str


def _partition_keys(instance: dg.DagsterInstance, run: dg.DagsterRun, pdef_name: str) -> list[str]:
    if key := run.tags.get(PARTITION_NAME_TAG):
        return [key]
    start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start and end:
        keys = instance.get_dynamic_partitions(pdef_name)
        if start in keys and end in keys:
            return keys[keys.index(start) : keys.index(end) + 1]
    return []


def _our_assets(run: dg.DagsterRun, targets: dict[dg.AssetKey, Target]) -> list[dg.AssetKey]:
    """Our table assets this run materializes: from its asset selection (UI, backfills), else from its
    job (a copy job launched whole, as the sensor's own requests are, carries no asset selection)."""
    if run.asset_selection:
        return [k for k in sorted(run.asset_selection, key=str) if k in targets]
    return [k for k, t in targets.items() if t.job_name == run.job_name]


def resume_requests(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    targets: dict[dg.AssetKey, Target],
    load_source: Callable[[str], SourceConfig],
) -> dg.SensorResult | dg.SkipReason | None:
    """The decision for one failed run: run requests, a reason to do nothing, or None (not ours)."""
    ours = _our_assets(run, targets)
    if not ours:
        return None
    if run.tags.get(WILL_RETRY_TAG) == "true":
        return dg.SkipReason(f"run {run.run_id}: Dagster's run retries will retry it; not resuming")
    attempt = int(run.tags.get(RESUME_ATTEMPT_TAG, "0") or 0)
    requests: list[dg.RunRequest] = []
    reasons: list[str] = []
    for source in sorted({targets[k].source for k in ours}):
        cfg = load_source(source)
        ledger = Ledger(cfg.postgres.ledger_schema)
        with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
            resumed_runs: set[str] = set()
            for asset_key in (k for k in ours if targets[k].source == source):
                target = targets[asset_key]
                registered = set(instance.get_dynamic_partitions(target.partitions_def_name))
                for key in _partition_keys(instance, run, target.partitions_def_name):
                    request, reason = _chunk_request(pg, ledger, cfg, run, target, key, attempt, registered)
                    if request is not None:
                        requests.append(request)
                        resumed_runs.add(request.tags[MIGRATION_RUN_TAG])
                    elif reason:
                        reasons.append(reason)
            for migration_run_id in sorted(resumed_runs):
                count = ledger.mark_resumed(pg, migration_run_id)
                log.info("resuming migration run %s (automatic resume #%d)", migration_run_id, count)
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason("; ".join(reasons) or f"run {run.run_id}: every chunk it copies is done")


def _chunk_request(
    pg: psycopg.Connection,
    ledger: Ledger,
    cfg: SourceConfig,
    run: dg.DagsterRun,
    target: Target,
    key: str,
    attempt: int,
    registered: set[str],
) -> tuple[dg.RunRequest | None, str | None]:
    where = f"{target.table_key} chunk {key} (run {run.run_id})"
    if key not in registered:
        return None, f"{where}: no longer a partition (a newer chunk plan replaced it); not resuming"
    try:
        entry, index = partitions.resolve(pg, cfg, key)
        *_, state = ledger.load_chunk(pg, entry.run_id, target.table_key, index)
    except DatacopyError as exc:
        return None, f"{where}: {exc}"
    if state.status == "done":
        return None, None
    # The same rule as `cm-datacopy run`: only the source's latest run, open, young enough, same config.
    decision = decide(cfg, ledger.latest_run(pg, cfg.name), no_resume=cfg.no_resume, automatic=True)
    if decision.run is None or decision.run.run_id != entry.run_id:
        return None, f"{where}: migration run {entry.run_id} is not resumed ({decision.reason}); plan a new run"
    if attempt >= cfg.max_resume_attempts:
        message = (
            f"{where}: giving up after {attempt} automatic resumes (max_resume_attempts={cfg.max_resume_attempts}); "
            "fix the cause and re-execute the run, or backfill the failed partitions"
        )
        log.error(message)
        ledger.finish_run(pg, entry.run_id, message)
        return None, message
    return (
        dg.RunRequest(
            job_name=target.job_name,
            partition_key=key,
            run_key=f"resume:{run.run_id}:{target.partitions_def_name}:{key}",
            tags={
                RESUME_ATTEMPT_TAG: str(attempt + 1),
                RESUMED_FROM_TAG: run.run_id,
                MIGRATION_RUN_TAG: entry.run_id,
            },
        ),
        None,
    )


def auto_resume_sensor(
    targets: dict[dg.AssetKey, Target],
    load_source: Callable[[str], SourceConfig],
    request_jobs: Sequence[UnresolvedAssetJobDefinition],
    minimum_interval_seconds: int = 10,
) -> dg.RunStatusSensorDefinition:
    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        description="Requests the failed and missing chunks of a failed copy run again (the seed's auto-resume).",
        monitor_all_code_locations=True,
        request_jobs=request_jobs,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.RunFailureSensorContext) -> dg.SensorResult | dg.SkipReason | None:
        decision = resume_requests(context.instance, context.dagster_run, targets, load_source)
        if isinstance(decision, dg.SkipReason):
            context.log.warning(decision.skip_message or "")
        elif isinstance(decision, dg.SensorResult):
            for request in decision.run_requests or []:
                context.log.info(
                    f"resuming {request.job_name} partition {request.partition_key} "
                    f"(attempt {request.tags[RESUME_ATTEMPT_TAG]})"
                )
        return decision

    return _sensor
