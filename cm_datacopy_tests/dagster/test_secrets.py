"""Secrets never reach Dagster: a chunk run's events, logs and metadata are scanned for the password."""

from __future__ import annotations

import os

import dagster as dg

from cm_datacopy_tests.dagster.helpers import EVENTS_JOB, load_defs, plan, seed_source, source_config
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV


def test_no_secret_in_dagster_events_or_metadata(snowflake_server, sf_db, pg_db, config_path, capfd):
    secret = os.environ[SNOWFLAKE_PASSWORD_ENV]
    assert len(secret) >= 12, "the stand-in's password is a random, recognisable token"
    seed_source(snowflake_server, sf_db)
    defs = load_defs(source_config(config_path, snowflake_server, sf_db, pg_db))
    with dg.instance_for_test() as instance:
        plan(defs, instance)
        job = defs.resolve_job_def(EVENTS_JOB)
        for key in instance.get_dynamic_partitions("analytics__copy__events"):
            assert job.execute_in_process(instance=instance, partition_key=key).success
        # A failing run too: its error text and failure metadata are scanned as well.
        os.environ[SNOWFLAKE_PASSWORD_ENV] = secret + "-wrong"
        try:
            failed = job.execute_in_process(
                instance=instance,
                partition_key=instance.get_dynamic_partitions("analytics__copy__events")[0],
                raise_on_error=False,
            )
        finally:
            os.environ[SNOWFLAKE_PASSWORD_ENV] = secret
        assert not failed.success
        records = instance.get_records_for_run(failed.run_id).records
        for run in instance.get_runs():
            records += instance.get_records_for_run(run.run_id).records
        text = "\n".join(repr(r.event_log_entry) for r in records)
        assert "copying copy.events chunk" in text, "the scan reads the real event log"
        assert "metadata" in text.lower() or "rows" in text
        for value in (secret, secret + "-wrong"):
            assert value not in text
        captured = capfd.readouterr()
        assert secret not in captured.out + captured.err
