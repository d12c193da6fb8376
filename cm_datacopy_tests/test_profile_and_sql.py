"""Source profile, the NUL-byte policy, and the Snowflake SQL the stand-in cannot run (Time Travel, spatial)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
import yaml

from cm_datacopy.chunk.nul import NulByteError, NulPolicy
from cm_datacopy.config import load_config
from cm_datacopy.ranges import plan_chunks
from cm_datacopy.snowflake.scan import Scan, select_expr
from cm_datacopy.typeplan import ColumnPlan, plan_columns
from cm_datacopy_tests.helpers import cli, pg_rows, sf_execute, write_config

NOTES_DDL = "CREATE TABLE NOTES (ID NUMBER(38,0), BODY VARCHAR, CREATED TIMESTAMP_TZ, PRICE NUMBER(18,4), R FLOAT)"
NOTES_ROWS = (
    "INSERT INTO NOTES SELECT seq8(), IFF(seq8() = 42, 'bad' || CHR(0) || 'byte', 'note ' || seq8()), "
    "'2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ, seq8() / 4, IFF(seq8() = 7, 'NaN'::FLOAT, seq8()) "
    "FROM TABLE(GENERATOR(ROWCOUNT => 300))"
)


def _notes(snowflake_server, sf_db, pg_db, config_path, **source):
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", NOTES_DDL, NOTES_ROWS)
    write_config(
        config_path,
        snowflake_server,
        sf_db,
        pg_db,
        [{"source": "NOTES", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 100}],
        **source,
    )


def test_profile_reports_facts_and_a_nul_byte_blocks_the_run(snowflake_server, sf_db, pg_db, config_path):
    _notes(snowflake_server, sf_db, pg_db, config_path)
    plan = cli(config_path, "plan", "analytics", "--profile")
    assert plan.returncode == 2
    assert "NOTES.BODY: 1 values hold a NUL byte, which PostgreSQL cannot store; set nul_bytes: replace" in plan.stderr
    assert "1 NaN/±inf values" in plan.stdout and "values use the fractional part" in plan.stdout
    run = cli(config_path, "run", "analytics")
    assert run.returncode == 2 and "NOTES.BODY: 1 values hold a NUL byte" in run.stderr
    assert pg_rows(pg_db, "SELECT to_regclass('migration_status.migration_runs')") == [(None,)], "stopped up front"
    assert pg_rows(pg_db, "SELECT to_regclass('copy.notes')") == [(None,)], "nothing was written"


def test_nul_bytes_replaced_when_configured(snowflake_server, sf_db, pg_db, config_path):
    _notes(snowflake_server, sf_db, pg_db, config_path, nul_bytes="replace", nul_replacement="?")
    plan = cli(config_path, "plan", "analytics", "--profile")
    assert plan.returncode == 0 and "they will be replaced by '?'" in plan.stdout
    run = cli(config_path, "run", "analytics")
    assert run.returncode == 0, run.stdout + run.stderr
    assert pg_rows(pg_db, "SELECT body FROM copy.notes WHERE id = 42") == [("bad?byte",)]
    assert pg_rows(
        pg_db,
        "SELECT sum(nul_replaced), bool_and(source_checksum = target_checksum) "
        "FROM migration_status.migration_chunk_status",
    ) == [(1, True)]


def test_a_nul_byte_met_while_copying_fails_the_chunk_naming_the_row():
    """Rows written after the plan's profile still meet the policy, inside the copy."""
    batch = pa.record_batch([pa.array([5, 6, 7]), pa.array(["ok", "b\x00ad", None])], names=["ID", "BODY"])
    body = ColumnPlan("BODY", "body", "VARCHAR(16777216)", "text", True)
    key = ColumnPlan("ID", "id", "NUMBER(38,0)", "numeric(38,0)", True)
    with pytest.raises(NulByteError, match="column 'BODY' of the row with ID = 6 holds a NUL byte"):
        NulPolicy([key, body], None, 0, "ID").apply(batch)
    policy = NulPolicy([key, body], "\ufffd", 0, "ID")
    assert policy.apply(batch).column(1).to_pylist() == ["ok", "b\ufffdad", None]
    assert policy.replaced == 1
    twice = pa.record_batch([pa.array([8]), pa.array(["\x00a\x00"])], names=["ID", "BODY"])
    assert policy.apply(twice).column(1).to_pylist() == ["\ufffda\ufffd"]
    assert policy.replaced == 3  # NUL bytes are counted, not the values holding them


def test_time_travel_sql_reads_every_chunk_at_the_run_start():
    columns = [ColumnPlan("ID", "id", "NUMBER(38,0)", "numeric(38,0)", True)]
    chunk = plan_chunks("s.t", "ID", "int", [100])[1]
    at = dt.datetime(2026, 11, 26, 8, 30, tzinfo=dt.UTC)
    statement, params = Scan('"DB"."PUBLIC"."T"', at, chunk).select_sql(columns)
    assert statement == ('SELECT "ID" FROM "DB"."PUBLIC"."T" AT(TIMESTAMP => CAST(? AS TIMESTAMP_TZ)) WHERE "ID" >= ?')
    assert params == ["2026-11-26 08:30:00+00:00", 100]


def test_the_stand_in_lacks_time_travel_so_the_run_reads_live_and_says_so(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE T AS SELECT seq8()::NUMBER(38,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))",
    )
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": "T", "target_schema": "copy"}])
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0
    assert "has no Time Travel" in result.stderr and "chunks read the live tables" in result.stderr
    assert pg_rows(pg_db, "SELECT snapshot_at FROM migration_status.migration_runs") == [(None,)]
    raw = yaml.safe_load(config_path.read_text())
    raw["sources"]["analytics"]["snowflake"]["time_travel"] = False
    config_path.write_text(yaml.safe_dump(raw))
    assert load_config(config_path).source("analytics").snowflake.time_travel is False
    quiet = cli(config_path, "run", "analytics")
    assert quiet.returncode == 0 and "Time Travel" not in quiet.stderr


@pytest.mark.parametrize(
    "postgis, pg_type, select",
    [
        (False, "jsonb", 'ST_ASGEOJSON("SHAPE")'),
        (True, "geography", 'ST_ASEWKT("SHAPE")'),
    ],
)
def test_spatial_columns_sql(postgis, pg_type, select):
    """The stand-in has no GEOGRAPHY: check the plan and the SQL we generate for real Snowflake."""
    (col,) = plan_columns([("SHAPE", "GEOGRAPHY", None, None, None, "YES")], postgis=postgis)
    assert col.pg_type == pg_type and select_expr(col) == select
    statement, _ = Scan('"DB"."PUBLIC"."T"', None, plan_chunks("s.t", None, None, [])[0]).select_sql([col])
    assert statement == f'SELECT {select} AS "SHAPE" FROM "DB"."PUBLIC"."T" WHERE TRUE'
    (geom,) = plan_columns([("G", "GEOMETRY", None, None, None, "YES")], postgis=postgis)
    assert geom.pg_type == ("geometry" if postgis else "jsonb")
