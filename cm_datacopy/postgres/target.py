"""The PostgreSQL side of a table: create it from the type plan, or check that an existing one fits.

An existing table whose columns do not keep the planned values is an error, never a silent cast.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy.errors import PlanError
from cm_datacopy.postgres.sql import create_schema_if_absent
from cm_datacopy.typeplan import ColumnPlan, fits

_PG_NAME_MAX = 63  # NAMEDATALEN - 1


def existing_columns(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> dict[str, tuple[str, bool, bool]] | None:
    """name → (format_type, not null, has default) of an existing table; None if it does not exist."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, table),
        )
        rows = cur.fetchall()
        if not rows:
            cur.execute(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (schema, table),
            )
            if cur.fetchone():
                raise PlanError(f"target {schema}.{table} exists but is not a table; choose another target name")
            return None
    return {name: (typ, notnull, hasdef) for name, typ, notnull, hasdef in rows}


def shape_problems(columns: list[ColumnPlan], existing: dict[str, tuple[str, bool, bool]]) -> list[str]:
    """Why an existing table cannot hold the planned columns (empty: it fits)."""
    problems = []
    planned = {c.target_name for c in columns}
    for col in columns:
        if col.target_name not in existing:
            problems.append(f"column {col.target_name!r} ({col.pg_type}) is missing")
            continue
        typ, notnull, _ = existing[col.target_name]
        if not fits(col.pg_type, typ):
            problems.append(f"column {col.target_name!r} is {typ}, needs {col.pg_type} to keep {col.snowflake_type}")
        elif notnull and col.nullable:
            problems.append(f"column {col.target_name!r} is NOT NULL but the source allows NULLs")
    for name, (_, notnull, hasdef) in existing.items():
        if name not in planned and notnull and not hasdef:
            problems.append(f"extra column {name!r} is NOT NULL without a default, so no row could be inserted")
    return problems


def check_fits(conn: psycopg.Connection[Any], schema: str, table: str, columns: list[ColumnPlan]) -> bool:
    """True if the table exists and fits, False if absent; PlanError if it exists and does not fit."""
    too_long = [
        f"{what} {name!r}"
        for what, name in (("schema", schema), ("table", table), *(("column", c.target_name) for c in columns))
        if len(name.encode()) > _PG_NAME_MAX
    ]
    if too_long:  # PostgreSQL would cut them: the table would be created, then never fit again
        raise PlanError(
            f"target {schema}.{table}: {', '.join(too_long)} longer than PostgreSQL's {_PG_NAME_MAX}-byte limit "
            "for names; choose a shorter target_schema/target, or rename the column at the source"
        )
    existing = existing_columns(conn, schema, table)
    conn.commit()
    if existing is None:
        return False
    problems = shape_problems(columns, existing)
    if problems:
        raise PlanError(
            f"target table {schema}.{table} does not fit the source: "
            + "; ".join(problems)
            + ". Alter or drop the table, or choose another target name"
        )
    return True


def create_table_sql(schema: str, table: str, columns: list[ColumnPlan]) -> sql.Composed:
    defs = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.target_name),
            sql.SQL(c.pg_type),  # a type name from typeplan's closed list, never user text
            sql.SQL("" if c.nullable else " NOT NULL"),
        )
        for c in columns
    )
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(sql.Identifier(schema, table), defs)


def ensure_table(
    conn: psycopg.Connection[Any], schema: str, table: str, columns: list[ColumnPlan], key_index: str | None = None
) -> bool:
    """Create the table (and schema) if absent; returns True if it was created.

    ``key_index``: a column to index, so in-place chunks delete their range without scanning the table.
    """
    if check_fits(conn, schema, table, columns):
        return False
    with conn.transaction(), conn.cursor() as cur:
        create_schema_if_absent(cur, schema)
        cur.execute(create_table_sql(schema, table, columns))
        if key_index is not None:
            cur.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(f"{table[:40]}_cmdc_chunk_key"),
                    sql.Identifier(schema, table),
                    sql.Identifier(key_index),
                )
            )
    return True


def has_postgis(conn: psycopg.Connection[Any]) -> bool:
    """Whether spatial columns can keep PostGIS types in this target (else GeoJSON in jsonb)."""
    row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'postgis'").fetchone()
    conn.commit()
    return bool(row and row[0])
