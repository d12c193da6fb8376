"""Identifiers made to break SQL, on both sides: they copy exactly, or are refused with one clear error.

Quotes, semicolons, comment markers, ``%`` and ``?`` (placeholder characters of psycopg and of the
Snowflake connector), unicode and spaces, in Snowflake table and column names and in PostgreSQL schema,
table and column names.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy_tests.helpers import cli, pg_rows, sf_execute, write_config

HOSTILE_TABLE = 'we"ird; DROP TABLE x;--%s?ü'
KEY = 'k%s? "id"'
VALUE = "v;--%(x)s ü 🚀"


@pytest.mark.parametrize(
    "target_schema, target",
    [
        ("copy", None),
        ('s"ch;%ema ?', 't%"; DELETE FROM x; --?'),
        ("Ünïcödé schéma", "Tâble 🚀"),
        ("[bold]s[/]", "t[/red] [x]"),  # rich console markup in names
    ],
)
@pytest.mark.parametrize("chunked", [True, False])
def test_hostile_names_copy_exactly(snowflake_server, sf_db, pg_db, config_path, target_schema, target, chunked):
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"CREATE TABLE {sf_ident(HOSTILE_TABLE)} AS SELECT seq8()::NUMBER(38,0) AS {sf_ident(KEY)}, "
        f"'row ' || seq8() || ' %s ? '' \" ;' AS {sf_ident(VALUE)} FROM TABLE(GENERATOR(ROWCOUNT => 2500))",
    )
    table = {"source": HOSTILE_TABLE, "target_schema": target_schema}
    if target:
        table["target"] = target
    if chunked:
        table |= {"chunk_key": KEY, "chunk_size": 1000}
    write_config(config_path, snowflake_server, sf_db, pg_db, [table])
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert cli(config_path, "run", "analytics").returncode == 0, "and again (the existing target fits)"
    name = target or HOSTILE_TABLE
    rows = pg_rows(
        pg_db,
        sql.SQL("SELECT count(*), count(DISTINCT {}), min({}), max({}) FROM {}").format(
            sql.Identifier(VALUE),
            sql.Identifier(KEY),
            sql.Identifier(VALUE),
            sql.Identifier(target_schema, name),
        ),
    )
    assert rows == [(2500, 2500, 0, "row 999 %s ? ' \" ;")]
    chunks = pg_rows(pg_db, "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'done'")
    assert chunks[0][0] == (2 * 3 if chunked else 2)


@pytest.mark.parametrize("name", ["NO[/x]TABLE", "[bold]NOPE"])
def test_errors_name_hostile_tables_exactly(snowflake_server, sf_db, pg_db, config_path, name):
    """An error naming a table prints the name as it is: no markup interpretation, no crash."""
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": name, "target_schema": "copy"}])
    for command in ("run", "plan", "check"):
        result = cli(config_path, command, "analytics")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"{name} does not exist" in " ".join(result.stderr.split())
