"""copy_<source> in process: the whole source in one run, "missing only" when launched again, publish mode."""

from __future__ import annotations

import dagster as dg
import pytest

from cm_datacopy.config import load_config
from cm_datacopy.dagster_defs.publish import publish_requests
from cm_datacopy.dagster_defs.reporting import CHECK_NAME, RETRYABLE
from cm_datacopy.dagster_defs.tags import RESUME_ATTEMPT
from cm_datacopy_tests.dagster.helpers import (
    EVENTS_CHUNK,
    EVENTS_KEY,
    EVENTS_PARTITIONS,
    EVENTS_ROWS,
    REGIONS_KEY,
    REGIONS_PARTITIONS,
    REGIONS_ROWS,
    chunk_held,
    copy_source,
    failed,
    load_defs,
    materialized,
    plan,
    seed_source,
    source_config,
)
from cm_datacopy_tests.helpers import pg_rows

EVENTS_PUBLISHED = dg.AssetKey(["analytics", "copy", "events_published"])
REGIONS_PUBLISHED = dg.AssetKey(["analytics", "copy", "regions_published"])


def _setup(snowflake_server, sf_db, pg_db, config_path, **overrides):
    seed_source(snowflake_server, sf_db)
    return load_defs(source_config(config_path, snowflake_server, sf_db, pg_db, workers=2, **overrides))


def _step_failure(result):
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data


def test_copy_source_copies_everything_in_one_run_and_launched_again_only_what_is_missing(
    snowflake_server, sf_db, pg_db, config_path
):
    defs = _setup(snowflake_server, sf_db, pg_db, config_path)
    with dg.instance_for_test() as instance:
        plan(defs, instance)  # the target table exists: the test can hold a lock in it
        with chunk_held(pg_db, EVENTS_CHUNK + 500):
            first = copy_source(defs, instance)
        assert not first.success
        run_id = pg_rows(pg_db, "SELECT run_id FROM migration_status.migration_runs")[0][0]
        events_keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
        regions_keys = instance.get_dynamic_partitions(REGIONS_PARTITIONS)
        assert materialized(instance, EVENTS_KEY) == {events_keys[0], events_keys[2]}
        assert materialized(instance, REGIONS_KEY) == set(regions_keys)
        assert not failed(instance, EVENTS_KEY, EVENTS_PARTITIONS), "a chunk a job did not finish shows missing"
        assert _step_failure(first).metadata[RETRYABLE].value is True
        assert instance.get_latest_materialization_event(REGIONS_PUBLISHED) is not None, "done tables are recorded"
        assert instance.get_latest_materialization_event(EVENTS_PUBLISHED) is None
        assert pg_rows(pg_db, "SELECT status FROM migration_status.migration_runs") == [("failed",)]

        second = copy_source(defs, instance)
        assert second.success
        assert [e.partition for e in second.get_asset_materialization_events() if e.partition] == [events_keys[1]]
        assert [(c.partition, c.check_name, c.passed) for c in second.get_asset_check_evaluations()] == [
            (events_keys[1], CHECK_NAME, True)
        ]
        assert instance.get_dynamic_partitions(EVENTS_PARTITIONS) == events_keys, "resumed: same keys"
        assert materialized(instance, EVENTS_KEY) == set(events_keys)
        assert pg_rows(pg_db, "SELECT run_id, status, resume_attempt_count FROM migration_status.migration_runs") == [
            (run_id, "completed", 2)
        ]
        assert pg_rows(pg_db, "SELECT count(*), count(DISTINCT body) FROM copy.events") == [(EVENTS_ROWS, EVENTS_ROWS)]
        assert pg_rows(pg_db, "SELECT count(*) FROM copy.regions") == [(REGIONS_ROWS,)]
        published = instance.get_latest_materialization_event(EVENTS_PUBLISHED).asset_materialization
        assert published.metadata["rows"].value == EVENTS_ROWS
        assert published.metadata["outcome"].value == "complete (in place)"
        config = load_config(config_path)
        assert publish_requests(instance, config, config.source) == ([], []), "the job recorded both tables itself"


def test_copy_source_publishes_publish_mode_tables_and_respects_no_resume(snowflake_server, sf_db, pg_db, config_path):
    defs = _setup(snowflake_server, sf_db, pg_db, config_path, mode="publish")
    with dg.instance_for_test() as instance:
        first = copy_source(defs, instance)
        assert first.success
        published = {
            e.asset_key: e.materialization.metadata for e in first.get_asset_materialization_events() if not e.partition
        }
        assert set(published) == {EVENTS_PUBLISHED, REGIONS_PUBLISHED}
        assert published[EVENTS_PUBLISHED]["outcome"].value == "swapped in (publish mode)"
        assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(EVENTS_ROWS,)]
        keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)

        again = copy_source(defs, instance, no_resume=True)
        assert again.success
        runs = pg_rows(pg_db, "SELECT status FROM migration_status.migration_runs ORDER BY started_at")
        assert runs == [("completed",), ("completed",)]
        new_keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
        assert len(new_keys) == 3 and not set(new_keys) & set(keys), "a new plan, new keys"
        assert materialized(instance, EVENTS_KEY) >= set(new_keys)


def test_an_automatic_resume_never_plans_a_new_run(snowflake_server, sf_db, pg_db, config_path):
    defs = _setup(snowflake_server, sf_db, pg_db, config_path)
    with dg.instance_for_test() as instance:
        assert copy_source(defs, instance).success
        # The latest run is completed: a person's launch would plan a new run, the sensor's must not.
        result = copy_source(defs, instance, tags={RESUME_ATTEMPT: "1"})
        assert not result.success
        failure = _step_failure(result)
        assert "automatic resume refused" in failure.description and failure.metadata[RETRYABLE].value is False
        assert pg_rows(pg_db, "SELECT count(*) FROM migration_status.migration_runs") == [(1,)]


@pytest.mark.parametrize("where", ["config", "connections"])
def test_a_bad_config_or_connection_fails_its_own_step_and_writes_nothing(
    snowflake_server, sf_db, pg_db, config_path, where
):
    defs = _setup(snowflake_server, sf_db, pg_db, config_path)
    if where == "config":
        config_path.write_text(config_path.read_text().replace("chunk_size: 2000", "chunk_size: -1"))
    else:
        config_path.write_text(config_path.read_text().replace("database: ", "database: NO_SUCH_"))
    with dg.instance_for_test() as instance:
        result = copy_source(defs, instance)
    assert not result.success
    failed_step = next(e for e in result.all_events if e.is_step_failure).step_key
    assert failed_step == {"config": "analytics_validate_config", "connections": "analytics_test_connections"}[where]
    assert _step_failure(result).metadata[RETRYABLE].value is (where == "connections")
    assert pg_rows(pg_db, "SELECT to_regclass('migration_status.migration_runs')") == [(None,)]


def test_planning_gives_the_source_pool_its_limit_before_a_backfill_queues_runs(
    snowflake_server, sf_db, pg_db, config_path
):
    """The run queue applies a pool's default limit only from the pass after it first sees the pool: the
    runs of a first backfill of a source's tables, queued together, would all start and meet on the
    source's lock. Planning sets the limit first; a limit someone set is kept."""
    defs = _setup(snowflake_server, sf_db, pg_db, config_path)
    pools = {"concurrency": {"pools": {"granularity": "run", "default_limit": 1}}}
    with dg.instance_for_test(overrides=pools) as instance:
        storage = instance.event_log_storage
        assert "cm_datacopy_analytics" not in storage.get_concurrency_keys()
        plan(defs, instance)
        assert "cm_datacopy_analytics" in storage.get_concurrency_keys()  # what the queue reads first
        assert storage.get_concurrency_info("cm_datacopy_analytics").slot_count == 1
        storage.set_concurrency_slots("cm_datacopy_analytics", 3)
        plan(defs, instance)
        assert storage.get_concurrency_info("cm_datacopy_analytics").slot_count == 3
    with dg.instance_for_test() as instance:  # no default limit: nothing is set
        plan(defs, instance)
        assert "cm_datacopy_analytics" not in instance.event_log_storage.get_concurrency_keys()
