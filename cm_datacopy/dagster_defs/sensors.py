"""Auto-resume: when a run that copies chunks fails, copy what it left undone again, by the CLI's rule.

It replaces the resume loop of the Step Functions system, with the same rule as ``cm-datacopy
run`` (``cm_datacopy.run.resume.decide``, asked as an automatic resume): only the source's latest
migration run, while it is open, younger than ``resume_max_age_hours``, planned under the same
configuration and not started with ``no_resume``; and at most ``max_resume_attempts`` automatic
resumes in a row (counted in the run tag ``cm_datacopy/resume_attempt``, one higher on each resumed
run; the ledger's ``resume_attempt_count`` counts every resume of the migration run).

It acts on whether another attempt can succeed: a chunk whose last error is final (a NUL byte, a
checksum mismatch seen twice, a value that does not fit, a refused publish) is not requested again
until someone fixes the cause; a step that says its failure is final (its ``retryable`` metadata)
is not resumed at all. Chunks that never ended (the run was killed) are requested again.

What it resumes: a failed ``copy_<source>`` run is launched again (it resumes the migration run and
copies every chunk not done); a failed run of table assets (a backfill's, a launch from the UI, or
one of this sensor's) gets exactly its chunks that are not done requested again, in as few runs as
there are contiguous stretches of them, with the chunks that are done but that Dagster never recorded
(a remote worker committed, its report was lost): their request reports the ledger's figures. It
watches every run of the deployment, because runs launched from the UI and from backfills run as
``__ASSET_JOB`` and would be missed by ``monitored_jobs``, and leaves alone runs that Dagster's own
run retries will retry (``dagster/will_retry``), so the two never double up.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg

from cm_datacopy.config import SourceConfig
from cm_datacopy.dagster_defs import partitions, tags
from cm_datacopy.dagster_defs.reporting import RETRYABLE
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.resume import decide

log = logging.getLogger(__name__)

SENSOR_NAME = "cm_datacopy_auto_resume"


@dataclass(frozen=True)
class TableTarget:
    """What the sensor needs to know about one table asset."""

    source: str
    table_key: str
    partitions_def_name: str
    job_name: str  # the job that copies its chunks alone


@dataclass(frozen=True)
class Targets:
    tables: dict[dg.AssetKey, TableTarget]
    source_jobs: dict[str, str]  # copy_<source> job name → source


Decision = dg.SensorResult | dg.SkipReason | None


def step_says_final(step_failures: Sequence[dg.DagsterEvent]) -> str | None:
    """The description of a failed step that says no attempt can succeed until someone acts, if any."""
    for event in step_failures:
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        flag = user.metadata.get(RETRYABLE) if user else None
        if flag is not None and flag.value is False:
            return (user.description if user else None) or event.message or "a final failure"
    return None


def resume_requests(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    targets: Targets,
    load_source: Callable[[str], SourceConfig],
    step_failures: Sequence[dg.DagsterEvent] = (),
) -> Decision:
    """The decision for one failed run: run requests, a reason to do nothing, or None (not ours)."""
    source = targets.source_jobs.get(run.job_name)
    tables = [] if source else _table_assets(run, targets)
    if source is None and not tables:
        return None
    if run.tags.get(tags.WILL_RETRY) == "true":
        return dg.SkipReason(f"run {run.run_id}: Dagster's run retries will retry it; not resuming")
    if final := step_says_final(step_failures):
        return dg.SkipReason(f"run {run.run_id} failed for a reason a retry cannot fix: {final}")
    attempt = tags.resume_attempt(run.tags)
    if source is not None:
        return _resume_source(run, source, load_source(source), attempt)
    requests: list[dg.RunRequest] = []
    reasons: list[str] = []
    for source_name in sorted({targets.tables[k].source for k in tables}):
        cfg = load_source(source_name)
        ledger = Ledger(cfg.postgres.ledger_schema)
        with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
            resumed_runs: set[str] = set()
            for asset_key in (k for k in tables if targets.tables[k].source == source_name):
                target = targets.tables[asset_key]
                new, why, resumes = _table_requests(instance, pg, ledger, cfg, run, asset_key, target, attempt)
                requests += new
                reasons += why
                resumed_runs.update(resumes)
            for migration_run_id in sorted(resumed_runs):
                count = ledger.mark_resumed(pg, migration_run_id)
                log.info("resuming migration run %s (automatic resume #%d)", migration_run_id, count)
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason("; ".join(reasons) or f"run {run.run_id}: every chunk it copies is done")


def _table_assets(run: dg.DagsterRun, targets: Targets) -> list[dg.AssetKey]:
    """Our table assets the run materializes: from its asset selection (UI, backfills), else from its
    job (a chunks job launched whole, as this sensor's requests are, carries no asset selection)."""
    if run.asset_selection:
        return [k for k in sorted(run.asset_selection, key=str) if k in targets.tables]
    return [k for k, t in targets.tables.items() if t.job_name == run.job_name]


def _give_up(
    pg: psycopg.Connection[Any], ledger: Ledger, cfg: SourceConfig, migration_run_id: str, what: str, attempt: int
) -> str:
    message = (
        f"{what}: giving up after {attempt} automatic resumes (max_resume_attempts={cfg.max_resume_attempts}); "
        "fix the cause, then launch the run again (or backfill the failed and missing partitions)"
    )
    log.error(message)
    ledger.finish_run(pg, migration_run_id, message)
    return message


def _resume_source(run: dg.DagsterRun, source: str, cfg: SourceConfig, attempt: int) -> Decision:
    """A failed copy_<source> run: launch the job again if the rule resumes the source's latest run."""
    ledger = Ledger(cfg.postgres.ledger_schema)
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        latest = ledger.latest_run(pg, source) if ledger.exists(pg) else None
        decision = decide(cfg, latest, no_resume=False, automatic=True)
        if decision.run is None:
            return dg.SkipReason(f"run {run.run_id} of {source}: not resumed ({decision.reason})")
        if attempt >= cfg.max_resume_attempts:
            return dg.SkipReason(_give_up(pg, ledger, cfg, decision.run.run_id, f"source {source}", attempt))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                job_name=run.job_name,
                run_key=f"resume:{run.run_id}",
                tags={
                    tags.RESUME_ATTEMPT: str(attempt + 1),
                    tags.RESUMED_FROM: run.run_id,
                    tags.MIGRATION_RUN: decision.run.run_id,
                },
            )
        ]
    )


def _run_partitions(instance: dg.DagsterInstance, run: dg.DagsterRun, target: TableTarget) -> list[str]:
    if key := run.tags.get(tags.PARTITION):
        return [key]
    start, end = run.tags.get(tags.RANGE_START), run.tags.get(tags.RANGE_END)
    if start and end:
        keys = instance.get_dynamic_partitions(target.partitions_def_name)
        if start in keys and end in keys:
            return keys[keys.index(start) : keys.index(end) + 1]
        return list(dict.fromkeys([start, end]))  # a newer plan removed them: the caller says so
    return []


def _table_requests(
    instance: dg.DagsterInstance,
    pg: psycopg.Connection[Any],
    ledger: Ledger,
    cfg: SourceConfig,
    run: dg.DagsterRun,
    asset_key: dg.AssetKey,
    target: TableTarget,
    attempt: int,
) -> tuple[list[dg.RunRequest], list[str], set[str]]:
    """Requests for the run's chunks of one table that are not done and can succeed, or done but never
    recorded as materialized (a remote worker committed, its report was lost: the request only reports the
    ledger's figures), grouped into stretches of consecutive partitions; the reasons for the chunks left
    alone; and the migration runs the requests resume (those with chunks to copy)."""
    registered = instance.get_dynamic_partitions(target.partitions_def_name)
    recorded = instance.get_materialized_partitions(asset_key)
    position = {key: i for i, key in enumerate(registered)}
    wanted: dict[str, list[str]] = {}  # migration run id → partition keys to request
    copying: set[str] = set()  # migration runs with a requested chunk that is not done
    reasons: list[str] = []
    states: dict[str, dict[int, dict[str, Any]]] = {}
    decisions: dict[str, str | None] = {}
    for key in _run_partitions(instance, run, target):
        where = f"{target.table_key} chunk {key} (run {run.run_id})"
        if key not in position:
            reasons.append(f"{where}: no longer a partition (a newer chunk plan replaced it); not resuming")
            continue
        try:
            tag, index = partitions.parse_key(key)
            entry = partitions.find_run(pg, cfg, tag)
        except DatacopyError as exc:
            reasons.append(f"{where}: {exc}")
            continue
        if entry.run_id not in states:
            states[entry.run_id] = {r["chunk_index"]: r for r in ledger.chunk_rows(pg, entry.run_id, target.table_key)}
        state = states[entry.run_id].get(index)
        if state is None:
            continue
        if state["status"] == "done":
            if key not in recorded:  # reported again from the ledger: no copy, no resume of the run
                wanted.setdefault(entry.run_id, []).append(key)
            continue
        if entry.run_id not in decisions:
            decision = decide(cfg, ledger.latest_run(pg, cfg.name), no_resume=False, automatic=True)
            resumes = decision.run is not None and decision.run.run_id == entry.run_id
            decisions[entry.run_id] = None if resumes else decision.reason
        if decisions[entry.run_id] is not None:
            reasons.append(f"{where}: migration run {entry.run_id} is not resumed ({decisions[entry.run_id]})")
            continue
        if state["status"] == "failed" and state["error_retryable"] is False:
            reasons.append(f"{where}: its error is final, fix the cause first: {state['last_error']}")
            continue
        wanted.setdefault(entry.run_id, []).append(key)
        copying.add(entry.run_id)
    requests = []
    for migration_run_id, keys in wanted.items():
        if attempt >= cfg.max_resume_attempts:
            what = f"{target.table_key} run {run.run_id}"
            if migration_run_id in copying:
                reasons.append(_give_up(pg, ledger, cfg, migration_run_id, what, attempt))
            else:
                reasons.append(
                    f"{what}: chunks done in the ledger but not recorded by Dagster; giving up after {attempt} "
                    f"automatic resumes (max_resume_attempts={cfg.max_resume_attempts}): backfill them to record them"
                )
            copying.discard(migration_run_id)
            continue
        for stretch in _stretches(sorted(keys, key=position.__getitem__), position):
            request_tags = {
                tags.RESUME_ATTEMPT: str(attempt + 1),
                tags.RESUMED_FROM: run.run_id,
                tags.MIGRATION_RUN: migration_run_id,
            }
            if len(stretch) > 1:
                request_tags.update({tags.RANGE_START: stretch[0], tags.RANGE_END: stretch[-1]})
            requests.append(
                dg.RunRequest(
                    job_name=target.job_name,
                    partition_key=stretch[0] if len(stretch) == 1 else None,
                    run_key=f"resume:{run.run_id}:{target.partitions_def_name}:{stretch[0]}",
                    tags=request_tags,
                )
            )
    return requests, reasons, copying


def _stretches(keys: list[str], position: dict[str, int]) -> list[list[str]]:
    """Keys (in partition order) cut where they stop being consecutive partitions."""
    out: list[list[str]] = []
    for key in keys:
        if out and position[key] == position[out[-1][-1]] + 1:
            out[-1].append(key)
        else:
            out.append([key])
    return out


def auto_resume_sensor(
    targets: Targets,
    load_source: Callable[[str], SourceConfig],
    request_jobs: Sequence[Any],
    minimum_interval_seconds: int = 10,
) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        description="When a run copying chunks fails, copies again what it left undone, by the same rule as "
        "cm-datacopy run (latest migration run, within resume_max_age_hours, at most max_resume_attempts times, "
        "never after a final error).",
        monitor_all_code_locations=True,
        request_jobs=request_jobs,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.RunFailureSensorContext) -> Decision:
        decision = resume_requests(
            context.instance, context.dagster_run, targets, load_source, context.get_step_failure_events()
        )
        if isinstance(decision, dg.SkipReason):
            context.log.warning(decision.skip_message or "")
        elif isinstance(decision, dg.SensorResult):
            for request in decision.run_requests or []:
                what = request.partition_key or (
                    f"{request.tags.get(tags.RANGE_START)} … {request.tags.get(tags.RANGE_END)}"
                    if tags.RANGE_START in request.tags
                    else "the whole source"
                )
                context.log.info(f"resuming {request.job_name}: {what} (attempt {request.tags[tags.RESUME_ATTEMPT]})")
        return decision

    return _sensor
