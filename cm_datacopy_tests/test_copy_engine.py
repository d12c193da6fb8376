"""The copy engine end to end: real PostgreSQL, the Snowflake stand-in over HTTP, the real CLI."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cm_datacopy.chunk import ChunkTask, copy_chunk
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.run.resume import start_or_resume
from cm_datacopy.run.runner import run_source
from cm_datacopy_tests.helpers import (
    cli,
    cli_popen,
    load,
    pg_rows,
    pg_table_rows,
    sf_connect,
    sf_execute,
    write_config,
)

ALL_TYPES_DDL = """
CREATE TABLE ALL_TYPES (
    ID NUMBER(38,0), SMALL NUMBER(4,0), MID NUMBER(9,0), BIG NUMBER(18,0), AMOUNT NUMBER(18,4),
    RATIO FLOAT, LABEL VARCHAR, CODE VARCHAR(12), FLAG BOOLEAN, DAY DATE, AT_TIME TIME,
    NTZ TIMESTAMP_NTZ, TZ TIMESTAMP_TZ, LTZ TIMESTAMP_LTZ, DOC VARIANT, OBJ OBJECT, ARR ARRAY, BLOB BINARY
)"""

ALL_TYPES_ROWS = [
    """INSERT INTO ALL_TYPES SELECT 1, -9999, 123456789, 999999999999999999, -12345678901234.5678, 1.5e300,
        'héllo "world", it''s
multi-line	tabbed', 'ABC', TRUE, '1969-07-20'::DATE, '23:59:59.123456'::TIME,
        '1901-12-13 20:45:52.123456'::TIMESTAMP_NTZ, '2024-03-10 02:30:00 -08:00'::TIMESTAMP_TZ,
        '2024-11-03 01:30:00'::TIMESTAMP_LTZ, PARSE_JSON('{"a": [1, 2.5, "ü🚀"], "b": {"c": null}}'),
        OBJECT_CONSTRUCT('k', 'v'), PARSE_JSON('[1, "two", {"three": 3}]')::ARRAY, TO_BINARY('00FF10AB', 'HEX')""",
    """INSERT INTO ALL_TYPES SELECT 2, 0, 0, 0, 0, -0.0, '', '', FALSE, '2262-04-11'::DATE, '00:00:00'::TIME,
        '2038-01-19 03:14:08'::TIMESTAMP_NTZ, '1970-01-01 00:00:00 +00:00'::TIMESTAMP_TZ,
        '1999-12-31 23:59:59.999999'::TIMESTAMP_LTZ, PARSE_JSON('"just a string"'), OBJECT_CONSTRUCT(),
        PARSE_JSON('[]')::ARRAY, TO_BINARY('', 'HEX')""",
    "INSERT INTO ALL_TYPES (ID) VALUES (3)",
    "INSERT INTO ALL_TYPES (ID, LABEL) VALUES (NULL, 'null key')",
]


def _normalise(value: Any) -> Any:
    """Both sides to one comparable form: JSON parsed, timestamps in UTC, binary as bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value[:1] in '[{"':
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    if isinstance(value, float) and value == 0:
        return (0.0, str(value))  # keeps -0.0 apart from 0.0
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return Decimal(value)
    return value


def _snowflake_rows(snowflake_server: Any, database: str, table: str, order: str) -> list[tuple[Any, ...]]:
    conn = sf_connect(snowflake_server, database)
    try:
        cur = conn.cursor()
        cur.execute(f'SELECT * FROM "PUBLIC"."{table}" ORDER BY "{order}" NULLS FIRST')
        return [tuple(_normalise(v) for v in row) for row in cur.fetchall()]
    finally:
        conn.close()


def _pg_rows(pg: dict[str, Any], schema: str, table: str, order: str) -> list[tuple[Any, ...]]:
    return [tuple(_normalise(v) for v in row) for row in pg_table_rows(pg, schema, table, order)]


def test_every_supported_type_round_trips(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", ALL_TYPES_DDL, *ALL_TYPES_ROWS)
    write_config(
        config_path,
        snowflake_server,
        sf_db,
        pg_db,
        [{"source": "ALL_TYPES", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 2}],
    )
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr

    columns = dict(
        pg_rows(
            pg_db,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'copy' "
            "AND table_name = 'all_types'",
        )
    )
    assert columns["id"] == "numeric" and columns["small"] == "smallint" and columns["big"] == "bigint"
    assert columns["tz"] == "timestamp with time zone" and columns["ntz"] == "timestamp without time zone"
    assert columns["doc"] == columns["obj"] == columns["arr"] == "jsonb" and columns["blob"] == "bytea"

    source = _snowflake_rows(snowflake_server, sf_db, "ALL_TYPES", "ID")
    target = _pg_rows(pg_db, "copy", "all_types", "id")
    assert len(source) == 4
    assert target == source
    null_row = next(r for r in target if r[0] == Decimal(3))
    assert all(v is None for v in null_row[1:]), "NULLs, NULL timestamps included, must stay NULL"
    checks = pg_rows(
        pg_db,
        "SELECT rows_copied, source_rows, source_checksum, target_checksum "
        "FROM migration_status.migration_chunk_status",
    )
    assert sum(r[0] for r in checks) == 4
    assert all(rows == src and s == t for rows, src, s, t in checks), checks
    assert any(s and s > 0 for _, _, s, _ in checks), "checksums were computed on both sides"


def _events_table(snowflake_server: Any, sf_db: str, rows: int) -> None:
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"""CREATE TABLE EVENTS AS SELECT IFF(seq8() % 101 = 7, NULL, seq8())::NUMBER(38,0) AS ID,
            'payload ' || seq8() || ' ' || REPEAT('x', 200) AS BODY,
            DATEADD(second, seq8(), '2024-01-01 00:00:00'::TIMESTAMP_NTZ) AS CREATED_AT
            FROM TABLE(GENERATOR(ROWCOUNT => {rows}))""",
    )


def _events_config(config_path: Path, snowflake_server: Any, sf_db: str, pg_db: dict[str, Any], **kw: Any) -> Path:
    return write_config(
        config_path,
        snowflake_server,
        sf_db,
        pg_db,
        [
            {
                "source": "EVENTS",
                "target_schema": "copy",
                "chunk_key": "ID",
                "chunk_size": kw.pop("chunk_size", 2000),
                "mode": kw.pop("mode", "in_place"),
            }
        ],
        **kw,
    )


def _assert_target_equals_source(pg_db: dict[str, Any], expected_rows: int) -> None:
    total, distinct_ids, nulls, distinct_bodies = pg_rows(
        pg_db,
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id IS NULL), count(DISTINCT body) "
        "FROM copy.events",
    )[0]
    assert total == expected_rows, f"{total} rows, expected {expected_rows}"
    assert distinct_bodies == expected_rows, "a row is duplicated or missing"
    assert distinct_ids + nulls == expected_rows


def _kill_inside_a_chunk_transaction(proc: Any, pg_db: dict[str, Any], timeout: float = 60) -> None:
    """SIGKILL the worker while its chunk transaction has written rows but not committed."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(**pg_db, autocommit=True) as watcher:
        while time.monotonic() < deadline and proc.poll() is None:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'cm_datacopy' AND backend_xid IS NOT NULL AND state <> 'idle' "
                "AND query ILIKE 'COPY%%'"
            ).fetchone()
            done = (
                Ledger().exists(watcher)
                and watcher.execute(
                    "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'done'"
                ).fetchone()[0]
            )
            if row[0] and done >= 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.002)
    raise AssertionError("the run ended before it could be killed inside a chunk")


def test_sigkill_mid_chunk_then_run_again_gives_exactly_the_source(snowflake_server, sf_db, pg_db, config_path):
    _events_table(snowflake_server, sf_db, 40_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db)
    proc = cli_popen(config_path, "run", "analytics")
    _kill_inside_a_chunk_transaction(proc, pg_db)

    open_chunk = pg_rows(pg_db, "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'running'")
    assert open_chunk[0][0] == 1, "the killed chunk stays open in the ledger"
    done_before = pg_rows(
        pg_db, "SELECT chunk_index, rows_copied FROM migration_status.migration_chunk_status WHERE status = 'done'"
    )
    rows_before = pg_rows(pg_db, "SELECT count(*) FROM copy.events")[0][0]
    assert rows_before == sum(r for _, r in done_before), "only committed chunks' rows are in the target"
    # The rows of completed chunks must never be rewritten by a resume: remember their row versions.
    versions_before = pg_rows(pg_db, "SELECT body, xmin::text FROM copy.events")

    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming run" in result.stdout
    _assert_target_equals_source(pg_db, 40_000)
    versions_after = dict(pg_rows(pg_db, "SELECT body, xmin::text FROM copy.events"))
    assert all(versions_after[body] == xmin for body, xmin in versions_before), "a completed chunk was rewritten"
    runs = pg_rows(pg_db, "SELECT status, resume_attempt_count FROM migration_status.migration_runs")
    assert runs == [("completed", 1)]


def test_running_again_gives_the_same_rows(snowflake_server, sf_db, pg_db, config_path):
    _events_table(snowflake_server, sf_db, 5_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=700)
    assert cli(config_path, "run", "analytics").returncode == 0
    first = pg_table_rows(pg_db, "copy", "events", "body")
    second_run = cli(config_path, "run", "analytics")
    assert second_run.returncode == 0, second_run.stderr
    assert "starting a new run" in second_run.stdout
    assert pg_table_rows(pg_db, "copy", "events", "body") == first
    assert len(first) == 5_000
    assert pg_rows(pg_db, "SELECT count(*) FROM migration_status.migration_runs WHERE status = 'completed'") == [(2,)]


def test_rows_deleted_at_the_source_disappear_on_the_next_run(snowflake_server, sf_db, pg_db, config_path):
    _events_table(snowflake_server, sf_db, 3_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=500)
    assert cli(config_path, "run", "analytics").returncode == 0
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "DELETE FROM EVENTS WHERE ID > 2500 OR ID IS NULL")
    assert cli(config_path, "run", "analytics").returncode == 0
    remaining = sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "SELECT COUNT(*) FROM EVENTS")[0][0]
    assert remaining == 2_476  # ids 0..2500 less the 25 whose seq8() % 101 = 7 (NULL ids)
    assert pg_rows(pg_db, "SELECT count(*), max(id) FROM copy.events") == [(remaining, 2_500)]


def _interrupted_run(snowflake_server, sf_db, pg_db, config_path) -> str:
    _events_table(snowflake_server, sf_db, 30_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db)
    proc = cli_popen(config_path, "run", "analytics")
    _kill_inside_a_chunk_transaction(proc, pg_db)
    return pg_rows(pg_db, "SELECT run_id FROM migration_status.migration_runs")[0][0]


def test_no_resume_starts_a_new_run(snowflake_server, sf_db, pg_db, config_path):
    old = _interrupted_run(snowflake_server, sf_db, pg_db, config_path)
    result = cli(config_path, "run", "analytics", "--no-resume")
    assert result.returncode == 0, result.stderr
    assert f"starting a new run (no_resume); run {old} is closed as superseded" in result.stdout
    runs = dict(pg_rows(pg_db, "SELECT run_id, status FROM migration_status.migration_runs"))
    assert len(runs) == 2 and runs[old] == "superseded"
    _assert_target_equals_source(pg_db, 30_000)


def test_run_older_than_resume_max_age_is_not_resumed(snowflake_server, sf_db, pg_db, config_path):
    old = _interrupted_run(snowflake_server, sf_db, pg_db, config_path)
    with psycopg.connect(**pg_db) as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET started_at = now() - interval '13 hours' WHERE run_id = %s",
            (old,),
        )
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stderr
    assert f"run {old} started 13.0 h ago, older than resume_max_age (12 h)" in result.stdout
    new = pg_rows(
        pg_db, "SELECT run_id, resume_attempt_count FROM migration_status.migration_runs WHERE run_id <> %s", (old,)
    )
    assert len(new) == 1 and new[0][1] == 0
    _assert_target_equals_source(pg_db, 30_000)


def test_a_run_within_resume_max_age_resumes_and_counts(snowflake_server, sf_db, pg_db, config_path):
    old = _interrupted_run(snowflake_server, sf_db, pg_db, config_path)
    with psycopg.connect(**pg_db) as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET started_at = now() - interval '11 hours' WHERE run_id = %s",
            (old,),
        )
    assert cli(config_path, "run", "analytics").returncode == 0
    assert pg_rows(pg_db, "SELECT run_id, resume_attempt_count, status FROM migration_status.migration_runs") == [
        (old, 1, "completed")
    ]


def test_a_second_concurrent_run_of_one_source_is_refused(snowflake_server, sf_db, pg_db, config_path):
    _events_table(snowflake_server, sf_db, 1_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db)
    cfg = load(config_path).source("analytics")
    with SourceLock(cfg):
        result = cli(config_path, "run", "analytics")
    assert result.returncode == 3
    assert "source 'analytics' is already being copied by another run" in result.stderr
    assert pg_rows(pg_db, "SELECT to_regclass('migration_status.migration_runs')") == [(None,)], "no run was created"
    # Once the holder is gone, the same command runs.
    assert cli(config_path, "run", "analytics").returncode == 0


def test_copy_chunk_is_idempotent(snowflake_server, sf_db, pg_db, config_path):
    """Calling the core function again for a done chunk changes nothing."""
    _events_table(snowflake_server, sf_db, 2_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=1000)
    cfg = load(config_path).source("analytics")
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        run = start_or_resume(cfg, pg)
        chunk = Ledger().chunks(pg, run.run_id)[1]
    task = ChunkTask(cfg.name, run.run_id, chunk.table_key, chunk.index)
    first = copy_chunk(cfg, task)
    assert first.outcome == "copied" and first.rows > 900 and first.attempt == 1
    again = copy_chunk(cfg, task)
    assert again.outcome == "already_done"
    # A done chunk reports the ledger's figures of the attempt that copied it, never zeros.
    assert (again.rows, again.attempt, again.source_checksum) == (first.rows, 1, first.source_checksum)
    assert again.verified
    assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(first.rows,)]
    outcome = run_source(cfg)
    assert outcome.start.resumed and outcome.status == "completed" and outcome.chunks_copied == 1
    assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(2000,)]


def test_resume_keeps_the_stored_chunk_plan(snowflake_server, sf_db, pg_db, config_path):
    old = _interrupted_run(snowflake_server, sf_db, pg_db, config_path)
    plan_before = pg_rows(
        pg_db,
        "SELECT chunk_index, lower_bound, upper_bound FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s ORDER BY chunk_index",
        (old,),
    )
    # Rows added at the source after the run started fall into the open-ended last chunk.
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "INSERT INTO EVENTS SELECT 10000000 + seq8(), 'late ' || seq8(), CURRENT_TIMESTAMP()::TIMESTAMP_NTZ "
        "FROM TABLE(GENERATOR(ROWCOUNT => 5))",
    )
    assert cli(config_path, "run", "analytics").returncode == 0
    plan_after = pg_rows(
        pg_db,
        "SELECT chunk_index, lower_bound, upper_bound FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s ORDER BY chunk_index",
        (old,),
    )
    assert plan_after == plan_before
    assert plan_before[0][1] is None and plan_before[-1][2] is None, "first and last ranges are open"


@pytest.mark.parametrize(
    "existing_ddl, message",
    [
        (
            "CREATE TABLE copy.events (id integer, body text, created_at timestamp)",
            "column 'id' is integer, needs numeric(38,0)",
        ),
        (
            "CREATE TABLE copy.events (id numeric(38,0), body text)",
            "column 'created_at' (timestamp without time zone) is missing",
        ),
        (
            "CREATE TABLE copy.events (id numeric(38,0), body text, created_at timestamptz)",
            "column 'created_at' is timestamp with time zone, needs timestamp without time zone",
        ),
    ],
)
def test_an_existing_target_that_does_not_fit_is_an_error(
    snowflake_server, sf_db, pg_db, config_path, existing_ddl, message
):
    _events_table(snowflake_server, sf_db, 100)
    _events_config(config_path, snowflake_server, sf_db, pg_db)
    with psycopg.connect(**pg_db) as conn:
        conn.execute("CREATE SCHEMA copy")
        conn.execute(existing_ddl)
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 2
    assert message in result.stderr.replace("\n", " ")
    assert pg_rows(pg_db, "SELECT to_regclass('migration_status.migration_runs')") == [(None,)], "nothing written"
