"""Time Travel on real Snowflake: every read of a run is ``AT`` its start, and a source replaced since
then (error 000707, e.g. a dbt ``CREATE OR REPLACE``) fails the chunk for good, saying what to do.

The stand-in has no Time Travel at all: the SQL is checked as text, and the error is the connector's
own exception class carrying Snowflake's error number, raised where the chunk reads.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from snowflake.connector.errors import ProgrammingError

from cm_datacopy import checksum
from cm_datacopy.chunk.copy import copy_chunk
from cm_datacopy.chunk.task import ChunkTask, classify
from cm_datacopy.ranges import plan_chunks
from cm_datacopy.run import resume
from cm_datacopy.snowflake.catalog import TIME_TRAVEL_UNAVAILABLE
from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.typeplan import ColumnPlan
from cm_datacopy_tests.helpers import load, pg_rows, sf_execute, write_config

AT = dt.datetime(2026, 11, 26, 8, 30, 0, 123456, tzinfo=dt.UTC)
AT_TEXT = "2026-11-26 08:30:00.123456+00:00"


def replaced_since_run_start() -> ProgrammingError:
    """What the connector raises when the table was re-created after the AT(...) moment."""
    return ProgrammingError(
        msg="Time travel data is not available for table EVENTS. The requested time is either beyond the allowed "
        "time travel period or before the object creation time.",
        errno=TIME_TRAVEL_UNAVAILABLE,
        sqlstate="02000",
        sfqid="01b2c3d4-0000-0000-0000-000000000001",
    )


def test_every_read_of_a_chunk_is_at_the_run_start():
    """The rows, their checksum and a count read the same table at the same moment, parameters in order."""
    columns = [
        ColumnPlan("ID", "id", "NUMBER(38,0)", "numeric(38,0)", True),
        ColumnPlan("AT", "at", "TIMESTAMP_TZ", "timestamp with time zone", True),
    ]
    chunk = plan_chunks("s.t", "ID", "int", [100, 200])[1]
    scan = Scan('"DB"."PUBLIC"."EVENTS"', AT, chunk)
    at_where = 'FROM "DB"."PUBLIC"."EVENTS" AT(TIMESTAMP => CAST(? AS TIMESTAMP_TZ)) WHERE "ID" >= ? AND "ID" < ?'

    rows, row_params = scan.select_sql(columns)
    assert rows == f'SELECT "ID", CAST("AT" AS TIMESTAMP_TZ(9)) AS "AT" {at_where}'
    sums, sum_params = checksum.snowflake_checksum_sql(scan, columns, "snowflake")
    assert sums.startswith("SELECT COUNT(*), COALESCE(SUM(TO_NUMBER(SUBSTR(MD5(") and sums.endswith(at_where)
    assert "'XXXXXXXXXXXXXXX'" in sums and "CONVERT_TIMEZONE('UTC', \"AT\")::TIMESTAMP_NTZ" in sums
    assert row_params == sum_params == [AT_TEXT, 100, 200]
    # without a snapshot (time_travel: false) the same reads have no AT and no parameter for it
    live, live_params = Scan('"DB"."PUBLIC"."EVENTS"', None, chunk).select_sql(columns)
    assert "AT(" not in live and live_params == [100, 200]


def test_time_travel_error_is_final_and_says_what_to_do():
    message, retryable = classify(replaced_since_run_start(), 'reading "DB"."PUBLIC"."EVENTS" from Snowflake')
    assert retryable is False
    assert message.startswith(
        'Snowflake while reading "DB"."PUBLIC"."EVENTS" from Snowflake: source replaced since run'
    )
    assert "run with --no-resume" in message
    # any other SQL error keeps its own text; a cancelled query stays retryable
    other, final = classify(ProgrammingError(msg="SQL compilation error", errno=2003), "reading")
    assert "SQL compilation error" in other and final is False
    cancelled = ProgrammingError(msg="SQL execution canceled", errno=604)
    assert classify(cancelled, "reading")[1] is True


@pytest.mark.parametrize("where", ["rows", "checksum"])
def test_a_chunk_of_a_replaced_source_fails_for_good(snowflake_server, sf_db, pg_db, config_path, monkeypatch, where):
    sf_execute(
        snowflake_server,
        sf_db,
        "CREATE TABLE PUBLIC.EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 50))",
    )
    write_config(
        config_path, snowflake_server, sf_db, pg_db, [{"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID"}]
    )
    cfg = load(config_path).sources["analytics"]
    with psycopg.connect(**pg_db) as pg:
        run = resume.start_or_resume(cfg, pg)
        pg.commit()

    def replaced(*_args, **_kwargs):
        raise replaced_since_run_start()

    if where == "rows":
        monkeypatch.setattr("cm_datacopy.chunk.copy.read_batches", replaced)
    else:
        monkeypatch.setattr(checksum, "snowflake_checksum", replaced)
    result = copy_chunk(cfg, ChunkTask("analytics", run.run_id, "copy.events", 0))
    assert result.outcome == "failed" and result.retryable is False
    assert "source replaced since run start" in result.error and "--no-resume" in result.error
    assert pg_rows(
        pg_db,
        "SELECT status, error_retryable, last_error LIKE %s, rows_copied FROM migration_status.migration_chunk_status",
        ("%source replaced since run start%",),
    ) == [("failed", False, True, None)]
    assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(0,)]
