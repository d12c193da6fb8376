"""Deterministic connection faults (the randomised series is in ``faults/``): one clear message, no traceback."""

from __future__ import annotations

import time

import psycopg

from cm_datacopy_tests.faults.proxy import Proxy
from cm_datacopy_tests.helpers import cli, cli_popen, pg_rows, sf_execute, write_config


def test_cut_connections_mid_run_end_with_a_message_and_resume(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'payload ' || seq8() || REPEAT('x', 300) AS BODY "
        "FROM TABLE(GENERATOR(ROWCOUNT => 60000))",
    )
    with Proxy((pg_db["host"], int(pg_db.get("port", 5432)))) as proxy:
        via_proxy = {**pg_db, "host": "127.0.0.1", "port": proxy.port}
        write_config(
            config_path,
            snowflake_server,
            sf_db,
            via_proxy,
            [{"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 1000}],
        )
        proc = cli_popen(config_path, "run", "analytics")
        with psycopg.connect(**pg_db, autocommit=True) as watcher:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                exists = watcher.execute("SELECT to_regclass('migration_status.migration_chunk_status')").fetchone()[0]
                if (
                    exists
                    and watcher.execute(
                        "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'done'"
                    ).fetchone()[0]
                ):
                    break
                time.sleep(0.01)
        assert proxy.cut() >= 2, "the run's lock and worker connections were open"
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 1, output
        assert "Traceback" not in output, output
        assert "again" in output
        status = pg_rows(pg_db, "SELECT status FROM migration_status.migration_runs")
        assert status == [("failed",)], "the run's end is recorded on a fresh connection"
        result = cli(config_path, "run", "analytics")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "resuming run" in result.stdout
    assert pg_rows(pg_db, "SELECT count(*), count(DISTINCT id) FROM copy.events") == [(60_000, 60_000)]
