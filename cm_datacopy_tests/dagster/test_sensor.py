"""The auto-resume sensor, given a real failed run: exactly the failed chunk, within age, attempts, no_resume."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from cm_datacopy.config import load_config
from cm_datacopy.dagster_defs import resume_targets
from cm_datacopy.dagster_defs.sensors import RESUME_ATTEMPT_TAG, SENSOR_NAME, WILL_RETRY_TAG, resume_requests
from cm_datacopy_tests.dagster.helpers import (
    EVENTS_CHUNK,
    EVENTS_JOB,
    chunk_held,
    load_defs,
    plan,
    seed_source,
    source_config,
)
from cm_datacopy_tests.helpers import pg_rows


@pytest.fixture
def setup(snowflake_server, sf_db, pg_db, config_path):
    seed_source(snowflake_server, sf_db)
    defs = load_defs(source_config(config_path, snowflake_server, sf_db, pg_db, max_resume_attempts=2))
    with dg.instance_for_test() as instance:
        yield defs, instance, pg_db


def _failed_chunk_run(defs, instance, pg, key, tags=None):
    """Materialize an EVENTS chunk while the test holds a lock in its range: the run fails for real."""
    index = int(key.rsplit("-", 1)[1])
    with chunk_held(pg, index * EVENTS_CHUNK + 500):
        result = defs.resolve_job_def(EVENTS_JOB).execute_in_process(
            instance=instance, partition_key=key, raise_on_error=False, tags=tags or {}
        )
    assert not result.success
    return result


def _evaluate(defs, instance, result):
    context = dg.build_run_status_sensor_context(
        sensor_name=SENSOR_NAME,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()
    return defs.resolve_sensor_def(SENSOR_NAME)(context)


def _resume_count(pg, run_id):
    return pg_rows(pg, "SELECT resume_attempt_count FROM migration_status.migration_runs WHERE run_id = %s", (run_id,))[
        0
    ][0]


def test_sensor_requests_exactly_the_failed_chunk_then_stops_after_max_attempts(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions("analytics__copy__events")
    ok = defs.resolve_job_def(EVENTS_JOB).execute_in_process(instance=instance, partition_key=keys[0])
    assert ok.success
    failed = _failed_chunk_run(defs, instance, pg, keys[1])
    assert (
        "waited longer than lock_timeout_seconds for a PostgreSQL lock while deleting the chunk's range"
        in pg_rows(
            pg,
            "SELECT last_error FROM migration_status.migration_chunk_status WHERE run_id = %s AND chunk_index = 1 "
            "AND table_key = 'copy.events'",
            (run_id,),
        )[0][0]
    )

    decision = _evaluate(defs, instance, failed)
    assert isinstance(decision, dg.SensorResult)
    [request] = decision.run_requests
    assert request.job_name == EVENTS_JOB and request.partition_key == keys[1]
    assert request.tags[RESUME_ATTEMPT_TAG] == "1"
    assert _resume_count(pg, run_id) == 1

    # The resumed run succeeds (the lock is gone): the chunk is done and nothing more is asked.
    resumed = defs.resolve_job_def(EVENTS_JOB).execute_in_process(
        instance=instance, partition_key=keys[1], tags=request.tags
    )
    assert resumed.success
    assert isinstance(_evaluate(defs, instance, failed), dg.SkipReason), "a done chunk is not requested again"

    # A chunk whose resumes already failed max_resume_attempts (2) times in a row: the sensor gives up.
    last = _failed_chunk_run(defs, instance, pg, keys[2], tags={RESUME_ATTEMPT_TAG: "2"})
    decision = _evaluate(defs, instance, last)
    assert isinstance(decision, dg.SkipReason)
    assert "giving up after 2 automatic resumes (max_resume_attempts=2)" in decision.skip_message
    one_below = _failed_chunk_run(defs, instance, pg, keys[2], tags={RESUME_ATTEMPT_TAG: "1"})
    decision = _evaluate(defs, instance, one_below)
    assert [r.tags[RESUME_ATTEMPT_TAG] for r in decision.run_requests] == ["2"]


def test_sensor_respects_max_age_no_resume_and_dagster_retries(setup, config_path):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions("analytics__copy__events")
    failed = _failed_chunk_run(defs, instance, pg, keys[1])

    # Dagster's own run retries will retry it: no double-up.
    retried = failed.dagster_run.with_tags({**failed.dagster_run.tags, WILL_RETRY_TAG: "true"})
    config = load_config(config_path)
    decision = resume_requests(instance, retried, resume_targets(config), config.source)
    assert isinstance(decision, dg.SkipReason) and "run retries" in decision.skip_message

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
    new_keys = instance.get_dynamic_partitions("analytics__copy__events")
    failed_fresh = _failed_chunk_run(defs, instance, pg, new_keys[1])
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
