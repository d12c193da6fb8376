"""Bad input: each case gives one clear error (no traceback), its exit code, and writes nothing.

"Writes nothing": no ``migration_status`` schema, no target schema or table in the target database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, cli, pg_rows, sf_execute, write_config


def _user_schemas(pg_db: dict[str, Any]) -> list[str]:
    return [
        r[0]
        for r in pg_rows(
            pg_db,
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('public', 'information_schema') "
            "AND nspname NOT LIKE 'pg\\_%'",
        )
    ]


def assert_nothing_written(pg_db: dict[str, Any]) -> None:
    assert _user_schemas(pg_db) == [], "a schema (ledger or target) was created"
    assert pg_rows(pg_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def assert_one_clear_error(result: Any, exit_code: int, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert "Traceback" not in output, output
    flat = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in flat, output


@pytest.fixture
def events(snowflake_server: Any, sf_db: str) -> str:
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'b' || seq8() AS BODY, "
        "CURRENT_DATE() AS DAY FROM TABLE(GENERATOR(ROWCOUNT => 100))",
    )
    return sf_db


def _config(config_path: Path, snowflake_server: Any, sf_db: str, pg_db: dict[str, Any], **table: Any) -> Path:
    spec = {"source": "EVENTS", "target_schema": "copy", **table}
    return write_config(config_path, snowflake_server, sf_db, pg_db, [spec])


def _edit(config_path: Path, change: Any) -> None:
    data = yaml.safe_load(config_path.read_text())
    change(data["sources"]["analytics"])
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))


# ---- malformed config files: exit 2, naming the file and field ----------------------------------------

MALFORMED = {
    "not yaml": ("sources: [unclosed\n", ["not valid YAML"]),
    "a list": ("- a\n- b\n", ["the file must hold a mapping with a 'sources' key"]),
    "no sources": ("defaults: {}\n", ["sources: required field is missing"]),
    "unknown top key": ("sources: {a: {}}\nsourcez: {}\n", ["sourcez: unknown field"]),
    "bad source name": ("sources:\n  Bad-Name: {}\n", ["source names are lower-case letters"]),
    "source not a mapping": ("sources:\n  analytics: 3\n", ["sources.analytics: Input should be a valid dictionary"]),
    "unknown default": ("defaults: {chunk_size: 3}\nsources: {a: {}}\n", ["defaults.chunk_size: not a default"]),
    "binary junk": ("\x00\x01\x02 sources", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_config_files(tmp_path, pg_db, case):
    text, fragments = MALFORMED[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in ("validate", "run"):
        result = cli(path, command, "analytics")
        assert_one_clear_error(result, 2, str(path), *fragments)


FIELD_ERRORS = {
    "typo in a field": (
        lambda s: s["tables"][0].update(chunk_sise=5),
        ["sources.analytics.tables.0.chunk_sise: unknown field"],
    ),
    "no auth": (
        lambda s: s["snowflake"].pop("password_env"),
        ["set exactly one of password_env or private_key_file_env"],
    ),
    "two auths": (
        lambda s: s["snowflake"].update(private_key_file_env="KEY_FILE"),
        ["set exactly one of password_env or private_key_file_env"],
    ),
    "env name with a secret in it": (
        lambda s: s["snowflake"].update(password_env="hunter2!"),
        ["is not an environment variable name"],
    ),
    "chunk_size 0": (lambda s: s["tables"][0].update(chunk_size=0), ["chunk_size: Input should be greater than"]),
    "no tables": (lambda s: s.update(tables=[]), ["tables: List should have at least 1 item"]),
    "two tables into one target": (
        lambda s: s["tables"].append(dict(s["tables"][0])),
        ["two tables write into copy.events"],
    ),
    "NUL in an identifier": (
        lambda s: s["tables"][0].update(target="ev\x00ents"),
        ["must not hold NUL bytes"],
    ),
    "port out of range": (lambda s: s["postgres"].update(port=70000), ["postgres.port"]),
    "chunk_timeout too small": (lambda s: s.update(chunk_timeout_seconds=1), ["chunk_timeout_seconds"]),
    "workers as text": (lambda s: s.update(workers="many"), ["workers"]),
}


@pytest.mark.parametrize("case", list(FIELD_ERRORS))
def test_invalid_fields(snowflake_server, sf_db, pg_db, config_path, case):
    change, fragments = FIELD_ERRORS[case]
    _config(config_path, snowflake_server, sf_db, pg_db)
    _edit(config_path, change)
    result = cli(config_path, "run", "analytics")
    assert_one_clear_error(result, 2, str(config_path), *fragments)
    assert_nothing_written(pg_db)


def test_missing_config_file(tmp_path):
    result = cli(tmp_path / "absent.yaml", "run")
    assert_one_clear_error(result, 2, "config file not found; pass --config FILE or set CM_DATACOPY_CONFIG")


def test_unknown_source(snowflake_server, sf_db, pg_db, config_path):
    _config(config_path, snowflake_server, sf_db, pg_db)
    for command in ("run", "plan", "check", "status", "validate"):
        result = cli(config_path, command, "nosuch")
        assert_one_clear_error(result, 2, "no source named 'nosuch'; configured: analytics")
    assert_nothing_written(pg_db)


# ---- credentials and connections: exit 2, nothing written ---------------------------------------------


def test_snowflake_password_variable_not_set(events, snowflake_server, pg_db, config_path):
    _config(config_path, snowflake_server, events, pg_db)
    env = {k: v for k, v in os.environ.items() if k != SNOWFLAKE_PASSWORD_ENV}
    result = cli(config_path, "run", "analytics", env=env)
    assert_one_clear_error(result, 2, f"environment variable {SNOWFLAKE_PASSWORD_ENV} is not set")
    assert_nothing_written(pg_db)


def test_wrong_snowflake_password(events, snowflake_server, pg_db, config_path):
    _config(config_path, snowflake_server, events, pg_db)
    env = {**os.environ, SNOWFLAKE_PASSWORD_ENV: "wrong-password-123"}
    result = cli(config_path, "run", "analytics", env=env)
    assert_one_clear_error(result, 2, "Snowflake refused user 'cm_datacopy': wrong user or password")
    assert "wrong-password-123" not in result.stdout + result.stderr
    assert_nothing_written(pg_db)


def test_wrong_snowflake_user(events, snowflake_server, pg_db, config_path):
    _config(config_path, snowflake_server, events, pg_db)
    _edit(config_path, lambda s: s["snowflake"].update(user="intruder"))
    result = cli(config_path, "run", "analytics")
    assert_one_clear_error(result, 2, "Snowflake refused user 'intruder'")
    assert_nothing_written(pg_db)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda s: s["postgres"].update(dbname="no_such_database_x"), 'database "no_such_database_x" does not exist'),
        (lambda s: s["postgres"].update(user="no_such_role_x"), 'role "no_such_role_x" does not exist'),
        (lambda s: s["postgres"].update(port=1, connect_timeout_seconds=2), "cannot connect to PostgreSQL 127.0.0.1:1"),
    ],
)
def test_postgres_cannot_be_reached(events, snowflake_server, pg_db, config_path, change, fragment):
    _config(config_path, snowflake_server, events, pg_db)
    _edit(config_path, change)
    result = cli(config_path, "run", "analytics")
    assert_one_clear_error(result, 2, fragment)
    assert_nothing_written(pg_db)


# ---- plan errors: the tables do not fit; exit 2, nothing written ---------------------------------------


@pytest.mark.parametrize(
    "table, fragment",
    [
        ({"source": "NO_SUCH_TABLE"}, "NO_SUCH_TABLE does not exist or is not visible to role"),
        ({"source": "events"}, "events does not exist or is not visible"),  # exact case matters
        ({"chunk_key": "NO_SUCH_COLUMN"}, "chunk_key 'NO_SUCH_COLUMN' is not a column of EVENTS; columns: ID, BODY"),
        ({"chunk_key": "BODY"}, "chunk_key 'BODY' of EVENTS is VARCHAR"),
        ({"source_schema": "NOPE"}, "NOPE.EVENTS does not exist"),
    ],
)
def test_tables_and_columns_that_do_not_exist(events, snowflake_server, pg_db, config_path, table, fragment):
    _config(config_path, snowflake_server, events, pg_db, **table)
    for command in ("plan", "run"):
        result = cli(config_path, command, "analytics")
        assert_one_clear_error(result, 2, fragment)
    assert_nothing_written(pg_db)


@pytest.mark.parametrize(
    "ddl, fragment",
    [
        ("CREATE TABLE copy.events (id bigint, body text, day date, extra int NOT NULL)", "extra column 'extra'"),
        ("CREATE TABLE copy.events (id numeric(38,0), body varchar(3), day date)", "column 'body' is character"),
        ("CREATE TABLE copy.events (id numeric(38,0), body text NOT NULL, day date)", "NOT NULL but the source"),
        ("CREATE VIEW copy.events AS SELECT 1 AS id", "exists but is not a table"),
    ],
)
def test_a_target_of_the_wrong_shape(events, snowflake_server, pg_db, config_path, ddl, fragment):
    _config(config_path, snowflake_server, events, pg_db)
    with psycopg.connect(**pg_db) as conn:
        conn.execute("CREATE SCHEMA copy")
        conn.execute(ddl)
    result = cli(config_path, "run", "analytics")
    assert_one_clear_error(result, 2, fragment)
    assert _user_schemas(pg_db) == ["copy"], "no ledger schema"


def test_a_name_too_long_for_postgresql_is_refused(snowflake_server, sf_db, pg_db, config_path):
    """PostgreSQL truncates names to 63 bytes: a longer one would copy once, then never fit again."""
    long_column = "C" * 70
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'x' AS {sf_ident(long_column)} "
        "FROM TABLE(GENERATOR(ROWCOUNT => 10))",
    )
    _config(config_path, snowflake_server, sf_db, pg_db)
    result = cli(config_path, "run", "analytics")
    assert_one_clear_error(result, 2, f"column {long_column.lower()!r}", "longer than PostgreSQL's 63-byte limit")
    assert_nothing_written(pg_db)


# ---- awkward chunk keys: copied exactly --------------------------------------------------------------


@pytest.mark.parametrize(
    "key_sql, nulls",
    [
        ("IFF(seq8() % 10 < 9, NULL, seq8())", 2700),  # 90 % NULL keys: all in the first chunk
        ("IFF(seq8() = 1234, 99999999999999999, seq8() % 7)", 0),  # one giant value, few distinct ones
        ("NULL", 3000),  # every key NULL
    ],
)
def test_awkward_chunk_keys_copy_exactly(snowflake_server, sf_db, pg_db, config_path, key_sql, nulls):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"CREATE TABLE EVENTS AS SELECT ({key_sql})::NUMBER(38,0) AS ID, 'row ' || seq8() AS BODY "
        "FROM TABLE(GENERATOR(ROWCOUNT => 3000))",
    )
    _config(config_path, snowflake_server, sf_db, pg_db, chunk_key="ID", chunk_size=250)
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert pg_rows(
        pg_db, "SELECT count(*), count(DISTINCT body), count(*) FILTER (WHERE id IS NULL) FROM copy.events"
    ) == [(3000, 3000, nulls)]
    assert cli(config_path, "run", "analytics").returncode == 0
    assert pg_rows(pg_db, "SELECT count(*) FROM copy.events") == [(3000,)]
