"""Publish mode through backfills: the published table is its own asset, requested once every chunk is done."""

from __future__ import annotations

import dagster as dg

from cm_datacopy.config import load_config
from cm_datacopy.dagster_defs.publish import PUBLISH_SENSOR_NAME, publish_requests
from cm_datacopy_tests.dagster.helpers import (
    EVENTS_JOB,
    EVENTS_PARTITIONS,
    copy_range,
    load_defs,
    plan,
    seed_source,
    source_config,
)
from cm_datacopy_tests.helpers import pg_rows

EVENTS_PUBLISHED = dg.AssetKey(["analytics", "copy", "events_published"])


def test_chunks_fill_the_shadow_and_the_published_asset_swaps_it_in(snowflake_server, sf_db, pg_db, config_path):
    seed_source(snowflake_server, sf_db)
    path = source_config(config_path, snowflake_server, sf_db, pg_db, mode="publish")
    defs = load_defs(path)
    config = load_config(path)
    with dg.instance_for_test() as instance:
        plan(defs, instance)
        nothing = publish_requests(instance, config, config.source)
        assert nothing == ([], []), "nothing to publish before chunks are done"
        keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
        assert copy_range(defs, instance, EVENTS_JOB, keys).success
        assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(0,)], "readers see nothing half-loaded"

        requests, recorded = publish_requests(instance, config, config.source)
        assert [r.asset_selection for r in requests] == [[EVENTS_PUBLISHED]], "only the table whose chunks are done"
        assert recorded == [], "a swap is a run's work, never recorded by the sensor"
        result = dg.materialize(
            [defs.get_assets_def(EVENTS_PUBLISHED)],
            instance=instance,
            resources={"datacopy": defs.resources["datacopy"]},
            selection=[EVENTS_PUBLISHED],
        )
        assert result.success
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        assert meta["rows"].value == 5_000 and meta["outcome"].value == "swapped in (publish mode)"
        assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(5_000,)]
        assert publish_requests(instance, config, config.source) == ([], []), "published: not requested again"
        assert pg_rows(pg_db, "SELECT status FROM migration_status.migration_runs") == [("running",)], (
            "the run completes only when the other table is done too"
        )


def test_an_in_place_table_is_recorded_published_by_the_sensor_without_a_run(
    snowflake_server, sf_db, pg_db, config_path
):
    """In place the chunks wrote the target: the sensor records the published asset itself (no run worker)."""
    seed_source(snowflake_server, sf_db)
    path = source_config(config_path, snowflake_server, sf_db, pg_db)  # in place
    defs = load_defs(path)
    sensor = defs.resolve_sensor_def(PUBLISH_SENSOR_NAME)
    with dg.instance_for_test() as instance:
        run_id = plan(defs, instance)
        assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
        keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
        assert copy_range(defs, instance, EVENTS_JOB, keys).success

        result = sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SensorResult) and not result.run_requests
        [recorded] = result.asset_events
        assert recorded.asset_key == EVENTS_PUBLISHED, "only the table whose chunks are done"
        meta = recorded.metadata
        assert (meta["outcome"].value, meta["rows"].value, meta["migration run"].value) == (
            "complete (in place)",
            5_000,
            run_id,
        )
        instance.report_runless_asset_event(recorded)  # what Dagster does with a sensor's asset events
        assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason), "recorded once"
        assert not instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": PUBLISH_SENSOR_NAME}))
