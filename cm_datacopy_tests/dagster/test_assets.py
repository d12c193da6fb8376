"""Planning and copying in process: partitions from the chunk plan, one chunk per materialization."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from cm_datacopy.config import load_config
from cm_datacopy.run.verify import verify_table
from cm_datacopy_tests.dagster.helpers import (
    EVENTS_JOB,
    EVENTS_KEY,
    REGIONS_KEY,
    load_defs,
    plan,
    seed_source,
    source_config,
    source_config_path,
)
from cm_datacopy_tests.helpers import pg_rows


@pytest.fixture
def setup(snowflake_server, sf_db, pg_db, config_path):
    seed_source(snowflake_server, sf_db)
    defs = load_defs(source_config(config_path, snowflake_server, sf_db, pg_db))
    with dg.instance_for_test() as instance:
        yield defs, instance, pg_db


def test_plan_registers_chunks_and_one_chunk_materializes_with_its_metadata(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    tag = run_id.rsplit("-", 1)[1]
    events_keys = instance.get_dynamic_partitions("analytics__copy__events")
    assert events_keys == [f"{tag}-00000", f"{tag}-00001", f"{tag}-00002"]
    assert instance.get_dynamic_partitions("analytics__copy__regions") == [f"{tag}-00000"]

    result = defs.resolve_job_def(EVENTS_JOB).execute_in_process(instance=instance, partition_key=events_keys[1])
    assert result.success
    [event] = result.get_asset_materialization_events()
    assert event.partition == events_keys[1]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    ledger_rows, ledger_bytes = pg_rows(
        pg,
        "SELECT rows_copied, bytes_copied FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s AND table_key = 'copy.events' AND chunk_index = 1",
        (run_id,),
    )[0]
    assert meta["rows"] == ledger_rows == 2000
    assert meta["bytes"] == ledger_bytes > 0
    assert meta["migration_run_id"] == run_id
    assert meta["attempt"] == 1 and meta["outcome"] == "copied"
    assert meta["seconds"] > 0 and meta["rows_per_second"] > 0
    assert pg_rows(pg, "SELECT count(*) FROM copy.events") == [(2000,)]
    assert instance.get_materialized_partitions(EVENTS_KEY) == {events_keys[1]}


def test_resume_keeps_keys_and_a_new_run_starts_unmaterialized(setup):
    defs, instance, pg = setup
    first = plan(defs, instance)
    keys = instance.get_dynamic_partitions("analytics__copy__events")
    assert defs.resolve_job_def(EVENTS_JOB).execute_in_process(instance=instance, partition_key=keys[0]).success

    resumed = plan(defs, instance)
    assert resumed == first
    assert instance.get_dynamic_partitions("analytics__copy__events") == keys
    assert instance.get_materialized_partitions(EVENTS_KEY) == {keys[0]}

    fresh = plan(defs, instance, no_resume=True)
    assert fresh != first
    new_keys = instance.get_dynamic_partitions("analytics__copy__events")
    assert len(new_keys) == 3 and not set(new_keys) & set(keys), "the old run's keys are removed"
    assert not instance.get_materialized_partitions(EVENTS_KEY) & set(new_keys)
    assert instance.get_dynamic_partitions("analytics__copy__regions") == [new_keys[0].split("-")[0] + "-00000"]
    assert pg_rows(pg, "SELECT no_resume FROM migration_status.migration_runs WHERE run_id = %s", (fresh,)) == [(True,)]
    assert not instance.get_materialized_partitions(REGIONS_KEY)


def test_each_chunk_run_checks_its_row_counts_and_names_a_chunk_that_differs(setup):
    defs, instance, pg = setup
    plan(defs, instance)
    keys = instance.get_dynamic_partitions("analytics__copy__events")
    job = defs.resolve_job_def(EVENTS_JOB)
    evaluations = []
    for key in keys:
        evaluations += job.execute_in_process(instance=instance, partition_key=key).get_asset_check_evaluations()
    assert [(e.partition, e.passed) for e in evaluations] == [(k, True) for k in keys]
    assert sum(e.metadata["target_rows"].value for e in evaluations) == 5_000
    regions = defs.resolve_job_def("copy__analytics__copy__regions").execute_in_process(
        instance=instance, partition_key=instance.get_dynamic_partitions("analytics__copy__regions")[0]
    )
    assert [e.passed for e in regions.get_asset_check_evaluations()] == [True]
    assert pg_rows(pg, "SELECT status FROM migration_status.migration_runs") == [("completed",)]

    # A row lost from the target after the copy: the verification names the chunk.
    with psycopg.connect(**pg) as conn:
        conn.execute("DELETE FROM copy.events WHERE id = 2222")
    cfg = load_config(source_config_path(defs)).source("analytics")
    run_id = pg_rows(pg, "SELECT run_id FROM migration_status.migration_runs")[0][0]
    result = verify_table(cfg, run_id, "copy.events")
    assert not result.ok and (result.source_rows, result.target_rows) == (5_000, 4_999)
    assert len(result.mismatches) == 1 and result.mismatches[0].startswith(
        "chunk copy.events#00001: Snowflake 2000 rows"
    )
    assert "PostgreSQL 1999 rows" in result.mismatches[0]
    assert result.mismatches[0].endswith("id=2222 missing in PostgreSQL")
