"""Quoting for the two SQL dialects. Values are always bound, never formatted into SQL."""

from __future__ import annotations

from typing import Any

from psycopg import sql


def sf_ident(name: str) -> str:
    """A Snowflake identifier, quoted: case kept, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def sf_table(database: str, schema: str, table: str) -> str:
    return ".".join(sf_ident(part) for part in (database, schema, table))


class BoundIdentifier(sql.Identifier):
    """A PostgreSQL identifier in a statement executed *with* parameters.

    psycopg reads every ``%`` of such a statement as a placeholder, even inside a quoted name: a
    name holding ``%s`` would take a parameter's place, any other ``%`` breaks the statement. The
    ``%`` of the name is doubled, which psycopg turns back into one ``%`` when it binds.
    Use plain ``sql.Identifier`` in statements without parameters (there ``%%`` stays ``%%``).
    """

    def as_bytes(self, context: Any = None) -> bytes:
        return super().as_bytes(context).replace(b"%", b"%%")


def create_schema_if_absent(cur: Any, name: str) -> None:
    """``CREATE SCHEMA`` only when absent: even ``IF NOT EXISTS`` needs CREATE on the database, which a
    role that was given its own pre-created schemas (the least privilege) does not have."""
    cur.execute("SELECT to_regnamespace(%s) IS NULL", (pg_name_text(name),))
    if cur.fetchone()[0]:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))


def pg_name_text(name: str) -> str:
    """A PostgreSQL name as regnamespace/regclass input text: always quoted, so case and dots are kept."""
    return '"' + name.replace('"', '""') + '"'
