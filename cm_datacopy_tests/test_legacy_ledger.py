"""A database that already holds the Step Functions system's ``migration_status`` tables.

Every command that reads or writes the ledger stops with one message naming the schema and the two
ways out, and writes nothing; with ``postgres.ledger_schema`` set to another schema everything works
beside the old tables, which stay untouched.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import yaml

from cm_datacopy_tests.helpers import cli, pg_rows, sf_execute, write_config

# A plausible shape of the old system's ledger: only its table names (migration_runs,
# migration_table_status, migration_chunk_status in schema migration_status) are known; the columns
# here are deliberately not ours (no `source`, no `config_fingerprint`).
OLD_LEDGER = """
CREATE SCHEMA migration_status;
CREATE TABLE migration_status.migration_runs (
    run_id uuid PRIMARY KEY, source_name text NOT NULL, status text NOT NULL, started_at timestamptz NOT NULL,
    completed_at timestamptz, resume_attempt_count integer NOT NULL DEFAULT 0, no_resume boolean DEFAULT false,
    error_message text);
CREATE TABLE migration_status.migration_table_status (
    run_id uuid REFERENCES migration_status.migration_runs, table_name text, status text, total_rows bigint,
    rows_migrated bigint);
CREATE TABLE migration_status.migration_chunk_status (
    run_id uuid, table_name text, chunk_id integer, offset_start bigint, offset_end bigint, status text,
    rows_migrated bigint, error_message text, updated_at timestamptz);
INSERT INTO migration_status.migration_runs VALUES
    ('6f1c2a4e-0000-4000-8000-000000000001', 'analytics', 'FAILED', now() - interval '3 days', NULL, 4, false,
     'Lambda timed out');
INSERT INTO migration_status.migration_table_status VALUES
    ('6f1c2a4e-0000-4000-8000-000000000001', 'EVENTS', 'IN_PROGRESS', 5000, 2000);
INSERT INTO migration_status.migration_chunk_status
    SELECT '6f1c2a4e-0000-4000-8000-000000000001', 'EVENTS', i, i * 1000, i * 1000 + 999,
           CASE WHEN i < 2 THEN 'COMPLETED' ELSE 'PENDING' END, CASE WHEN i < 2 THEN 1000 END, NULL, now()
    FROM generate_series(0, 4) AS i;
"""

ONE_MESSAGE = "schema 'migration_status' holds tables cm_datacopy did not create"


def _database_state(pg: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every relation outside the system schemas, with a checksum of its rows."""
    with psycopg.connect(**pg) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2"
        ).fetchall()
        state = []
        for schema, name, kind in relations:
            digest = None
            if kind == "r":
                digest = conn.execute(
                    psycopg.sql.SQL("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} t").format(
                        psycopg.sql.Identifier(schema, name)
                    )
                ).fetchone()
            state.append((schema, name, kind, digest))
        return state


@pytest.fixture
def legacy(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'e' || seq8() AS BODY "
        "FROM TABLE(GENERATOR(ROWCOUNT => 5000))",
    )
    with psycopg.connect(**pg_db, autocommit=True) as conn:
        conn.execute(OLD_LEDGER)
    table = {"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 1000}
    write_config(config_path, snowflake_server, sf_db, pg_db, [table])
    return config_path


@pytest.mark.parametrize(
    "args",
    [
        ("check", "analytics"),
        ("status", "analytics"),
        ("status",),
        ("plan", "analytics"),
        ("run", "analytics"),
        ("history", "analytics"),
        ("verify", "analytics"),
    ],
    ids=lambda args: " ".join(args),
)
def test_each_command_gives_one_clear_message_and_writes_nothing(legacy, pg_db, args):
    before = _database_state(pg_db)
    result = cli(legacy, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.count(ONE_MESSAGE) == 1, message
    assert "set postgres.ledger_schema to another schema" in message
    assert "ALTER SCHEMA migration_status RENAME TO migration_status_legacy" in message
    assert "migration_chunk_status, migration_runs, migration_table_status" in message
    assert _database_state(pg_db) == before, "nothing may be written"


def test_another_ledger_schema_works_beside_the_old_tables(legacy, pg_db):
    before = [row for row in _database_state(pg_db) if row[0] == "migration_status"]
    raw = yaml.safe_load(legacy.read_text())
    raw["sources"]["analytics"]["postgres"]["ledger_schema"] = "cm_datacopy_ledger"
    legacy.write_text(yaml.safe_dump(raw))

    for args in (("check", "analytics"), ("plan", "analytics"), ("run", "analytics"), ("status", "analytics")):
        result = cli(legacy, *args)
        assert result.returncode == 0, (args, result.stdout + result.stderr)
    assert "completed" in cli(legacy, "history", "analytics").stdout
    assert cli(legacy, "verify", "analytics").returncode == 0
    assert cli(legacy, "status").returncode == 0

    assert [row for row in _database_state(pg_db) if row[0] == "migration_status"] == before
    assert pg_rows(pg_db, "SELECT count(*), count(DISTINCT body) FROM copy.events") == [(5000, 5000)]
    assert pg_rows(pg_db, "SELECT status FROM cm_datacopy_ledger.migration_runs") == [("completed",)]
    # Our tables say whose they are, and which version of the ledger they hold.
    comments = pg_rows(
        pg_db,
        "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'cm_datacopy_ledger' AND c.relkind = 'r' ORDER BY 1",
    )
    assert [name for name, _ in comments] == [
        "migration_chunk_status",
        "migration_runs",
        "migration_table_status",
        "schema_version",
    ]
    assert all(comment.startswith("cm_datacopy ledger") for _, comment in comments), comments
    assert pg_rows(pg_db, "SELECT max(version) > 0 FROM cm_datacopy_ledger.schema_version") == [(True,)]


def test_a_table_of_someone_else_in_our_ledger_schema_is_refused(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10))",
    )
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": "EVENTS", "target_schema": "copy"}])
    assert cli(config_path, "run", "analytics").returncode == 0
    with psycopg.connect(**pg_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE migration_status.notes (note text)")
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 2
    assert "holds tables cm_datacopy did not create (notes)" in " ".join(result.stderr.split())
