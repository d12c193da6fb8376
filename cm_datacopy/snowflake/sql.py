"""Quoting for Snowflake SQL. Values are always bound (qmark), never formatted into a statement."""

from __future__ import annotations


def sf_ident(name: str) -> str:
    """A Snowflake identifier, quoted: case kept, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def sf_table(database: str, schema: str, table: str) -> str:
    return ".".join(sf_ident(part) for part in (database, schema, table))


def sf_string(value: str) -> str:
    """A Snowflake string literal (backslash is an escape character in Snowflake strings)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
