"""Publish mode through backfills: the published table is its own asset, requested once every chunk is done."""

from __future__ import annotations

import dagster as dg

from cm_datacopy.config import load_config
from cm_datacopy.dagster_defs.publish import publish_requests
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
        assert publish_requests(instance, config, config.source) == [], "nothing to publish before chunks are done"
        keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
        assert copy_range(defs, instance, EVENTS_JOB, keys).success
        assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(0,)], "readers see nothing half-loaded"

        requests = publish_requests(instance, config, config.source)
        assert [r.asset_selection for r in requests] == [[EVENTS_PUBLISHED]], "only the table whose chunks are done"
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
        assert publish_requests(instance, config, config.source) == [], "published: not requested again"
        assert pg_rows(pg_db, "SELECT status FROM migration_status.migration_runs") == [("running",)], (
            "the run completes only when the other table is done too"
        )
