"""Secrets never reach Dagster: a chunk run's events, logs and metadata are scanned for the password."""

from __future__ import annotations

import os

import dagster as dg

from cm_datacopy_tests.dagster.helpers import (
    EVENTS_JOB,
    EVENTS_PARTITIONS,
    copy_range,
    copy_source,
    load_defs,
    plan,
    seed_source,
    source_config,
)
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV


def test_no_secret_in_dagster_events_or_metadata(snowflake_server, sf_db, pg_db, config_path, capfd):
    secret = os.environ[SNOWFLAKE_PASSWORD_ENV]
    assert len(secret) >= 12, "the stand-in's password is a random, recognisable token"
    seed_source(snowflake_server, sf_db)
    defs = load_defs(source_config(config_path, snowflake_server, sf_db, pg_db))
    with dg.instance_for_test() as instance:
        plan(defs, instance)
        assert copy_range(defs, instance, EVENTS_JOB, instance.get_dynamic_partitions(EVENTS_PARTITIONS)).success
        assert copy_source(defs, instance).success
        # A failing run too: its error text and failure metadata are scanned as well.
        os.environ[SNOWFLAKE_PASSWORD_ENV] = secret + "-wrong"
        try:
            failed = copy_source(defs, instance, no_resume=True)
        finally:
            os.environ[SNOWFLAKE_PASSWORD_ENV] = secret
        assert not failed.success
        records = instance.get_records_for_run(failed.run_id).records
        for run in instance.get_runs():
            records += instance.get_records_for_run(run.run_id).records
        text = "\n".join(repr(r.event_log_entry) for r in records)
        assert "chunks, 1 in flight" in text and "ASSET_MATERIALIZATION" in text, "the scan reads the real event log"
        assert "metadata" in text.lower() or "rows" in text
        for value in (secret, secret + "-wrong"):
            assert value not in text
        captured = capfd.readouterr()
        assert secret not in captured.out + captured.err
