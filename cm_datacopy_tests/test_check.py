"""The connection test step: one actionable line per problem, no secrets, nothing written."""

from __future__ import annotations

import os
import socket
import uuid

import psycopg
import pytest
from psycopg import sql

from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, admin_conninfo, cli, pg_rows, sf_execute, write_config

TABLES = [{"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 10}]


@pytest.fixture
def events(snowflake_server, sf_db):
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "CREATE TABLE EVENTS (ID NUMBER(38,0), NAME VARCHAR)")


def test_check_passes_on_a_working_source(snowflake_server, sf_db, pg_db, config_path, events):
    write_config(config_path, snowflake_server, sf_db, pg_db, TABLES)
    result = cli(config_path, "check", "analytics")
    assert result.returncode == 0, result.stderr
    assert "ok analytics" in result.stdout
    assert pg_rows(pg_db, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('copy', 'migration_status')") == [(0,)]


def test_wrong_snowflake_password(snowflake_server, sf_db, pg_db, config_path, events, monkeypatch):
    write_config(config_path, snowflake_server, sf_db, pg_db, TABLES)
    env = {**os.environ, SNOWFLAKE_PASSWORD_ENV: "wrong-password-XYZZY"}
    result = cli(config_path, "check", "analytics", env=env)
    assert result.returncode == 2
    assert (
        "Snowflake refused user 'cm_datacopy': wrong user or password (check CM_DATACOPY_TEST_SNOWFLAKE_PASSWORD)"
        in (result.stderr)
    )
    assert "XYZZY" not in result.stdout + result.stderr


def test_wrong_snowflake_host(snowflake_server, sf_db, pg_db, config_path, events):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    write_config(config_path, snowflake_server, sf_db, pg_db, TABLES)
    text = config_path.read_text().replace(f"port: {snowflake_server.port}", f"port: {closed_port}")
    config_path.write_text(text.replace("login_timeout_seconds: 10", "login_timeout_seconds: 2"))
    result = cli(config_path, "check", "analytics")
    assert result.returncode == 2
    assert f"snowflake: cannot reach Snowflake at 127.0.0.1:{closed_port}" in result.stderr


def test_missing_table_and_missing_chunk_key(snowflake_server, sf_db, pg_db, config_path, events):
    tables = [
        {"source": "NOPE", "target_schema": "copy"},
        {"source": "EVENTS", "target_schema": "copy", "chunk_key": "MISSING"},
        {"source": "EVENTS", "target_schema": "copy", "target": "by_name", "chunk_key": "NAME"},
    ]
    write_config(config_path, snowflake_server, sf_db, pg_db, tables)
    result = cli(config_path, "check", "analytics")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("✗")]
    assert len(lines) == 3, result.stderr
    assert f"Snowflake table {sf_db}.PUBLIC.NOPE does not exist or is not visible" in lines[0]
    assert "chunk_key 'MISSING' is not a column of EVENTS; columns: ID, NAME" in lines[1]
    assert "chunk_key 'NAME' of EVENTS is VARCHAR(16777216): use a number, date or timestamp column" in lines[2]


def test_missing_postgres_privilege(snowflake_server, sf_db, pg_db, config_path, events):
    role = f"cmdc_nopriv_{uuid.uuid4().hex[:8]}"
    admin = admin_conninfo()
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(sql.Identifier(pg_db["dbname"])))
        write_config(config_path, snowflake_server, sf_db, {**pg_db, "user": role}, TABLES)
        result = cli(config_path, "check", "analytics")
        assert result.returncode == 2
        assert f"postgres: user '{role}' cannot create tables in schema 'copy'" in result.stderr
        assert "grant CREATE on the schema" in result.stderr
    finally:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_unreachable_postgres(snowflake_server, sf_db, pg_db, config_path, events):
    write_config(config_path, snowflake_server, sf_db, {**pg_db, "dbname": "no_such_database_here"}, TABLES)
    result = cli(config_path, "check", "analytics")
    assert result.returncode == 2
    assert 'database "no_such_database_here" does not exist' in result.stderr
