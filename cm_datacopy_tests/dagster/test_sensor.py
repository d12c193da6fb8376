"""The auto-resume sensor, given real failed runs: exactly the chunks left undone, by the CLI's rule."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from cm_datacopy.chunk import ChunkTask, copy_chunk
from cm_datacopy.config import load_config
from cm_datacopy.dagster_defs import resume_targets
from cm_datacopy.dagster_defs.sensors import SENSOR_NAME, resume_requests
from cm_datacopy.dagster_defs.tags import MIGRATION_RUN, RANGE_END, RANGE_START, RESUME_ATTEMPT, WILL_RETRY
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy_tests.dagster.helpers import (
    EVENTS_JOB,
    EVENTS_KEY,
    EVENTS_PARTITIONS,
    EVENTS_ROWS,
    chunk_held,
    copy_range,
    copy_source,
    load_defs,
    materialized,
    plan,
    seed_source,
    source_config,
)
from cm_datacopy_tests.helpers import pg_rows, sf_execute


@pytest.fixture
def setup(snowflake_server, sf_db, pg_db, config_path):
    seed_source(snowflake_server, sf_db)
    defs = load_defs(source_config(config_path, snowflake_server, sf_db, pg_db, max_resume_attempts=2))
    with dg.instance_for_test() as instance:
        yield defs, instance, pg_db


def _bounds(pg):
    """The two boundaries of the EVENTS plan: a key inside each chunk is below b1, between, above b2."""
    (b1,), (b2,) = pg_rows(
        pg,
        "SELECT upper_bound::bigint FROM migration_status.migration_chunk_status WHERE table_key = 'copy.events' "
        "AND upper_bound IS NOT NULL ORDER BY run_id, chunk_index LIMIT 2",
    )
    return b1, b2


def _inside(pg, index):
    b1, b2 = _bounds(pg)
    return [b1 // 2, (b1 + b2) // 2, b2 + 100][index]


def _evaluate(defs, instance, result):
    context = dg.build_run_status_sensor_context(
        sensor_name=SENSOR_NAME,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()
    return defs.resolve_sensor_def(SENSOR_NAME)(context)


def _run(defs, instance, request):
    return defs.resolve_job_def(request.job_name).execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False
    )


def _resume_count(pg, run_id):
    return pg_rows(pg, "SELECT resume_attempt_count FROM migration_status.migration_runs WHERE run_id = %s", (run_id,))[
        0
    ][0]


def _failed_range(defs, instance, pg, keys, held, tags=None):
    """A ranged run of EVENTS chunks while the test holds a lock in the chunks ``held``: it fails for real."""
    with chunk_held(pg, _inside(pg, held[0])):
        if len(held) > 1:
            with chunk_held(pg, _inside(pg, held[1])):
                result = copy_range(defs, instance, EVENTS_JOB, keys, tags)
        else:
            result = copy_range(defs, instance, EVENTS_JOB, keys, tags)
    assert not result.success
    return result


def test_sensor_requests_exactly_the_chunks_left_undone_in_stretches_then_gives_up(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    failed = _failed_range(defs, instance, pg, keys, held=[0, 2])
    assert materialized(instance, EVENTS_KEY) == {keys[1]}

    decision = _evaluate(defs, instance, failed)
    assert isinstance(decision, dg.SensorResult)
    assert [(r.job_name, r.partition_key) for r in decision.run_requests] == [
        (EVENTS_JOB, keys[0]),
        (EVENTS_JOB, keys[2]),
    ]
    assert {r.tags[RESUME_ATTEMPT] for r in decision.run_requests} == {"1"}
    assert {r.tags[MIGRATION_RUN] for r in decision.run_requests} == {run_id}
    assert _resume_count(pg, run_id) == 1
    for request in decision.run_requests:
        assert _run(defs, instance, request).success
    assert materialized(instance, EVENTS_KEY) == set(keys)
    assert isinstance(_evaluate(defs, instance, failed), dg.SkipReason), "done chunks are not requested again"
    assert pg_rows(pg, "SELECT count(*), count(DISTINCT body) FROM copy.events") == [(EVENTS_ROWS, EVENTS_ROWS)]


def test_a_chunk_done_but_never_recorded_is_requested_to_report_the_ledgers_figures(setup, config_path):
    """A worker committed its chunk but its report never reached Dagster (a Lambda log tail that lost it):
    the ledger says done, the UI says failed. The sensor requests it again; that run copies nothing and
    records the ledger's figures."""
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    failed = _failed_range(defs, instance, pg, keys, held=[1])
    cfg = load_config(config_path).source("analytics")
    assert copy_chunk(cfg, ChunkTask("analytics", run_id, "copy.events", 1)).outcome == "copied"  # unreported
    assert materialized(instance, EVENTS_KEY) == {keys[0], keys[2]}

    [request] = _evaluate(defs, instance, failed).run_requests
    assert (request.job_name, request.partition_key, request.tags[RESUME_ATTEMPT]) == (EVENTS_JOB, keys[1], "1")
    assert _resume_count(pg, run_id) == 0, "nothing to copy: the migration run is not resumed"
    reported = _run(defs, instance, request)
    assert reported.success
    [event] = reported.get_asset_materialization_events()
    assert event.materialization.metadata["copied"].value == "earlier (figures from the ledger)"
    assert materialized(instance, EVENTS_KEY) == set(keys)
    assert pg_rows(pg, "SELECT attempts FROM migration_status.migration_chunk_status WHERE chunk_index = 1") == [(2,)]
    assert isinstance(_evaluate(defs, instance, failed), dg.SkipReason), "recorded now: not requested again"


def test_consecutive_chunks_are_resumed_in_one_run_and_resumes_stop_at_max_attempts(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    failed = _failed_range(defs, instance, pg, keys, held=[1, 2], tags={RESUME_ATTEMPT: "1"})
    [request] = _evaluate(defs, instance, failed).run_requests
    assert (request.partition_key, request.tags[RANGE_START], request.tags[RANGE_END]) == (None, keys[1], keys[2])
    assert request.tags[RESUME_ATTEMPT] == "2"

    # That resume fails too: it was the max_resume_attempts-th (2) in a row; the sensor gives up.
    again = _failed_range(defs, instance, pg, keys[1:], held=[1], tags=request.tags)
    decision = _evaluate(defs, instance, again)
    assert isinstance(decision, dg.SkipReason)
    assert "giving up after 2 automatic resumes (max_resume_attempts=2)" in decision.skip_message
    assert pg_rows(pg, "SELECT status FROM migration_status.migration_runs WHERE run_id = %s", (run_id,)) == [
        ("failed",)
    ]


def test_a_final_error_is_not_resumed(setup, snowflake_server, sf_db):
    """A NUL byte written after the plan: the chunk fails with a final error; resuming cannot help."""
    defs, instance, pg = setup
    plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    bad = _inside(pg, 1)
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", f"UPDATE EVENTS SET BODY = 'a' || CHR(0) WHERE ID = {bad}")
    failed = copy_range(defs, instance, EVENTS_JOB, keys)
    assert not failed.success
    assert materialized(instance, EVENTS_KEY) == {keys[0], keys[2]}
    decision = _evaluate(defs, instance, failed)
    assert isinstance(decision, dg.SkipReason)
    assert "failed for a reason a retry cannot fix" in decision.skip_message
    assert "holds a NUL byte" in decision.skip_message


def test_a_failed_copy_source_run_is_launched_again_and_resumes(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    with chunk_held(pg, _inside(pg, 1)):
        failed = copy_source(defs, instance)
    assert not failed.success
    [request] = _evaluate(defs, instance, failed).run_requests
    assert (request.job_name, request.tags[RESUME_ATTEMPT], request.tags[MIGRATION_RUN]) == (
        "copy_analytics",
        "1",
        run_id,
    )
    resumed = defs.resolve_job_def("copy_analytics").execute_in_process(instance=instance, tags=request.tags)
    assert resumed.success
    assert pg_rows(pg, "SELECT status FROM migration_status.migration_runs") == [("completed",)]


def test_sensor_respects_max_age_no_resume_a_busy_source_and_dagster_retries(setup, config_path):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    failed = _failed_range(defs, instance, pg, keys[1:2], held=[1])

    # Dagster's own run retries will retry it: no double-up.
    retried = failed.dagster_run.with_tags({**failed.dagster_run.tags, WILL_RETRY: "true"})
    config = load_config(config_path)
    decision = resume_requests(instance, retried, resume_targets(config), config.source)
    assert isinstance(decision, dg.SkipReason) and "run retries" in decision.skip_message

    # Another process (a `cm-datacopy run`) holds the source: it copies the chunks; not resumed.
    with SourceLock(config.source("analytics")):
        busy = copy_range(defs, instance, EVENTS_JOB, keys[1:2])
    assert not busy.success
    decision = _evaluate(defs, instance, busy)
    assert isinstance(decision, dg.SkipReason) and "already being copied by another run" in decision.skip_message

    # Older than resume_max_age_hours (12 h): not resumed.
    with psycopg.connect(**pg) as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET started_at = now() - interval '13 hours' WHERE run_id = %s",
            (run_id,),
        )
    decision = _evaluate(defs, instance, failed)
    assert isinstance(decision, dg.SkipReason) and "older than resume_max_age (12 h)" in decision.skip_message
    assert _resume_count(pg, run_id) == 0

    # A run planned with no_resume is never resumed automatically.
    fresh = plan(defs, instance, no_resume=True)
    new_keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    failed_fresh = _failed_range(defs, instance, pg, new_keys[1:2], held=[1])
    decision = _evaluate(defs, instance, failed_fresh)
    assert isinstance(decision, dg.SkipReason) and "no_resume" in decision.skip_message
    assert _resume_count(pg, fresh) == 0

    # The old run's failed chunk is no longer a partition: a newer plan replaced it.
    decision = _evaluate(defs, instance, failed)
    assert isinstance(decision, dg.SkipReason) and "newer chunk plan" in decision.skip_message


def test_runs_of_other_assets_are_ignored(setup):
    defs, instance, _ = setup

    @dg.asset
    def unrelated() -> None:
        raise RuntimeError("boom")

    result = dg.materialize([unrelated], instance=instance, raise_on_error=False)
    assert _evaluate(defs, instance, result) is None
