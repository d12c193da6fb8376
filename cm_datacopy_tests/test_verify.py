"""Per-chunk verification on both sides: a clean copy verifies; a corrupted row is found by key."""

from __future__ import annotations

import psycopg

from cm_datacopy_tests.helpers import cli, pg_rows, sf_execute, write_config


def _setup(snowflake_server, sf_db, pg_db, config_path, mode: str):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        """CREATE TABLE ORDERS AS SELECT seq8()::NUMBER(38,0) AS ID, 'item ' || seq8() AS NAME,
           (seq8() / 7)::NUMBER(18,4) AS PRICE, seq8() / 3.0 AS RATIO,
           DATEADD(minute, seq8(), '2001-02-03 04:05:06'::TIMESTAMP_TZ) AS AT,
           seq8() % 2 = 0 AS PAID, TO_BINARY(LPAD(TO_CHAR(seq8() % 256, 'XX'), 2, '0'), 'HEX') AS TAG
           FROM TABLE(GENERATOR(ROWCOUNT => 5000))""",
    )
    write_config(
        config_path,
        snowflake_server,
        sf_db,
        pg_db,
        [{"source": "ORDERS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 1000, "mode": mode}],
    )
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_clean_copy_verifies(snowflake_server, sf_db, pg_db, config_path):
    _setup(snowflake_server, sf_db, pg_db, config_path, "publish")
    result = cli(config_path, "verify", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copy.orders" in result.stdout and "5,000" in result.stdout and "yes" in result.stdout
    stored = pg_rows(
        pg_db,
        "SELECT count(*), count(*) FILTER (WHERE source_checksum = target_checksum AND source_rows = rows_copied) "
        "FROM migration_status.migration_chunk_status",
    )
    assert stored == [(5, 5)], "every chunk's checksums were stored, equal, at copy time"


def test_verify_names_the_chunk_and_key_of_a_corrupted_row(snowflake_server, sf_db, pg_db, config_path):
    _setup(snowflake_server, sf_db, pg_db, config_path, "in_place")
    with psycopg.connect(**pg_db) as conn:
        conn.execute("UPDATE copy.orders SET price = price + 0.0001 WHERE id = 3217")
        conn.execute("DELETE FROM copy.orders WHERE id = 4500")
        conn.execute("INSERT INTO copy.orders (id, name) VALUES (-5, 'intruder')")
    result = cli(config_path, "verify", "analytics")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stderr
    assert "chunk copy.orders#00003" in errors and "id=3217 differs" in errors
    assert "chunk copy.orders#00004" in errors and "id=4500 missing in PostgreSQL" in errors
    assert "chunk copy.orders#00000" in errors and "id=-5 extra in PostgreSQL" in errors
    assert "chunk copy.orders#00001" not in errors, "clean chunks are not reported"


def test_a_float_or_timestamp_change_is_caught(snowflake_server, sf_db, pg_db, config_path):
    _setup(snowflake_server, sf_db, pg_db, config_path, "in_place")
    with psycopg.connect(**pg_db) as conn:
        conn.execute("UPDATE copy.orders SET ratio = ratio + 0.00001 WHERE id = 10")
        conn.execute("UPDATE copy.orders SET at = at + interval '1 microsecond' WHERE id = 2002")
        conn.execute("UPDATE copy.orders SET tag = '\\x00' WHERE id = 3003")
    result = cli(config_path, "verify", "analytics")
    assert result.returncode == 1
    for key in ("id=10 differs", "id=2002 differs", "id=3003 differs"):
        assert key in result.stderr
