"""Quoting for the two SQL dialects. Values are always bound, never formatted into SQL."""

from __future__ import annotations

from psycopg import sql


def sf_ident(name: str) -> str:
    """A Snowflake identifier, quoted: case kept, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def sf_table(database: str, schema: str, table: str) -> str:
    return ".".join(sf_ident(part) for part in (database, schema, table))


def pg_table(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)
