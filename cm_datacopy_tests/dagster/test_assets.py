"""Table assets in process: readable chunk keys, many chunks per run, true per-chunk figures and checks."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from cm_datacopy.config import load_config
from cm_datacopy.dagster_defs.reporting import CHECK_NAME, RETRYABLE
from cm_datacopy.run.resume import start_or_resume
from cm_datacopy_tests.dagster.helpers import (
    EVENTS_CHUNK,
    EVENTS_JOB,
    EVENTS_KEY,
    EVENTS_PARTITIONS,
    EVENTS_ROWS,
    REGIONS_KEY,
    REGIONS_PARTITIONS,
    chunk_held,
    copy_range,
    failed,
    load_defs,
    materialized,
    plan,
    seed_source,
    source_config,
    source_config_path,
)
from cm_datacopy_tests.helpers import pg_rows


@pytest.fixture
def setup(snowflake_server, sf_db, pg_db, config_path):
    seed_source(snowflake_server, sf_db)
    defs = load_defs(source_config(config_path, snowflake_server, sf_db, pg_db, workers=2))
    with dg.instance_for_test() as instance:
        yield defs, instance, pg_db


def _ledger_chunks(pg, run_id, table="copy.events"):
    rows = pg_rows(
        pg,
        "SELECT chunk_index, rows_copied, bytes_copied, attempts, source_checksum, target_checksum "
        "FROM migration_status.migration_chunk_status WHERE run_id = %s AND table_key = %s ORDER BY chunk_index",
        (run_id, table),
    )
    return {r[0]: r[1:] for r in rows}


def _meta(event):
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_keys_show_the_key_range_and_one_run_copies_every_chunk_with_its_own_figures(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    tag = run_id.rsplit("-", 1)[1]
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    (b1,), (b2,) = pg_rows(
        pg,
        "SELECT upper_bound FROM migration_status.migration_chunk_status WHERE table_key = 'copy.events' "
        "AND upper_bound IS NOT NULL ORDER BY chunk_index",
    )
    assert keys == [f"00000_min_to_{b1}@{tag}", f"00001_{b1}_to_{b2}@{tag}", f"00002_{b2}_to_max@{tag}"]
    assert instance.get_dynamic_partitions(REGIONS_PARTITIONS) == [f"00000_all_rows@{tag}"]

    result = copy_range(defs, instance, EVENTS_JOB, keys)
    assert result.success
    assert len(result.get_step_success_events()) == 1, "one step copies the three chunks and checks them"
    events = {e.partition: e for e in result.get_asset_materialization_events()}
    assert sorted(events) == keys, "one materialization per chunk, no duplicates"
    ledger = _ledger_chunks(pg, run_id)
    for index, key in enumerate(keys):
        meta = _meta(events[key])
        rows, nbytes, attempts, source_checksum, target_checksum = ledger[index]
        assert (meta["rows"], meta["bytes"], meta["attempt"]) == (rows, nbytes, attempts) == (rows, nbytes, 1)
        assert (
            meta["source checksum"] == meta["target checksum"] == str(int(source_checksum)) == str(int(target_checksum))
        )
        assert meta["seconds"] > 0 and meta["rows per second"] > 0
        assert meta["migration run"] == run_id and meta["copied"] == "by this run"
        assert "rows copied" in meta["table progress"]
    assert sum(ledger[i][0] for i in ledger) == EVENTS_ROWS
    assert _meta(events[keys[1]])["key range"] == f"ID >= {b1} AND ID < {b2}"
    assert _meta(events[keys[0]])["key range"] == f"ID < {b1} (or NULL)"

    checks = result.get_asset_check_evaluations()
    assert sorted((c.partition, c.passed, c.check_name) for c in checks) == [(k, True, CHECK_NAME) for k in keys]
    assert all(c.target_materialization_data is not None for c in checks), "the UI ties each result to its chunk"
    assert materialized(instance, EVENTS_KEY) == set(keys)
    # The last chunk's materialization carries the table's totals: the asset's overview shows them.
    latest = instance.get_latest_materialization_event(EVENTS_KEY).asset_materialization
    assert f"| {EVENTS_ROWS:,} | 100.0 % | 3 of 3 |" in latest.metadata["table progress"].value


def test_a_failing_chunk_leaves_its_run_mates_materialized_and_only_itself_failed(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    with chunk_held(pg, EVENTS_CHUNK + 500):
        result = copy_range(defs, instance, EVENTS_JOB, keys)
    assert not result.success
    assert materialized(instance, EVENTS_KEY) == {keys[0], keys[2]}
    assert failed(instance, EVENTS_KEY, EVENTS_PARTITIONS) == {keys[1]}
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    user = failure.step_failure_data.user_failure_data
    assert user.metadata[RETRYABLE].value is True
    assert "1 of 3 chunks failed (a retry can succeed)" in user.description
    assert "waited longer than lock_timeout_seconds" in user.description
    assert pg_rows(
        pg,
        "SELECT status, error_retryable FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s AND table_key = 'copy.events' AND chunk_index = 1",
        (run_id,),
    ) == [("failed", True)]

    # "Failed and missing only": the failed chunk alone, in a run of its own.
    again = copy_range(defs, instance, EVENTS_JOB, [keys[1]])
    assert again.success
    assert [e.partition for e in again.get_asset_materialization_events()] == [keys[1]]
    assert pg_rows(pg, "SELECT count(*), count(DISTINCT body) FROM copy.events") == [(EVENTS_ROWS, EVENTS_ROWS)]


def test_a_done_chunk_materialized_again_reports_the_ledger_figures_and_is_not_copied(setup):
    defs, instance, pg = setup
    run_id = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    assert copy_range(defs, instance, EVENTS_JOB, keys).success
    again = copy_range(defs, instance, EVENTS_JOB, keys[1:2])
    assert again.success
    [event] = again.get_asset_materialization_events()
    meta = _meta(event)
    rows, nbytes, attempts, source_checksum, _ = _ledger_chunks(pg, run_id)[1]
    assert (meta["rows"], meta["bytes"], meta["attempt"]) == (rows, nbytes, attempts) == (rows, nbytes, 1) and rows > 0
    assert meta["source checksum"] == str(int(source_checksum)) and meta["copied"].startswith("earlier")
    [check] = again.get_asset_check_evaluations()
    assert check.passed and check.metadata["target rows"].value == rows


def test_resume_keeps_keys_and_a_new_plan_gets_new_ones(setup):
    defs, instance, pg = setup
    first = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    assert copy_range(defs, instance, EVENTS_JOB, keys[:1]).success

    assert plan(defs, instance) == first
    assert instance.get_dynamic_partitions(EVENTS_PARTITIONS) == keys
    assert materialized(instance, EVENTS_KEY) == {keys[0]}

    fresh = plan(defs, instance, no_resume=True)
    assert fresh != first
    new_keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    assert len(new_keys) == 3 and not set(new_keys) & set(keys), "the old run's keys are removed"
    assert not materialized(instance, EVENTS_KEY) & set(new_keys)
    assert pg_rows(pg, "SELECT no_resume FROM migration_status.migration_runs WHERE run_id = %s", (fresh,)) == [(True,)]
    assert not materialized(instance, REGIONS_KEY)


def test_chunks_of_a_replaced_run_and_keys_added_by_hand_are_refused_without_copying(setup):
    defs, instance, pg = setup
    old = plan(defs, instance)
    keys = instance.get_dynamic_partitions(EVENTS_PARTITIONS)
    # A new run planned outside Dagster (as `cm-datacopy run --no-resume` does): the old keys remain.
    cfg = load_config(source_config_path(defs)).source("analytics")
    with psycopg.connect(**pg) as conn:
        new = start_or_resume(cfg, conn, no_resume=True).run_id
    result = copy_range(defs, instance, EVENTS_JOB, keys[1:2])
    assert not result.success
    user = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert f"migration run {old} was replaced by {new}" in user.description
    assert user.metadata[RETRYABLE].value is False
    assert pg_rows(pg, "SELECT count(*) FROM migration_status.migration_chunk_status WHERE attempts > 0") == [(0,)]

    instance.add_dynamic_partitions(EVENTS_PARTITIONS, ["by hand"])
    bogus = defs.resolve_job_def(EVENTS_JOB).execute_in_process(
        instance=instance, partition_key="by hand", raise_on_error=False
    )
    assert not bogus.success
    message = next(e for e in bogus.all_events if e.is_step_failure).step_failure_data.user_failure_data.description
    assert (
        "'by hand' is not a chunk of a migration run" in message and "the next plan of the source removes it" in message
    )
