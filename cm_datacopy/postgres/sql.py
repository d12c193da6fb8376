"""Quoting for PostgreSQL. Values are always bound, never formatted into a statement."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from cm_datacopy.ranges import Chunk


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


def chunk_where(chunk: Chunk, key_target_column: str | None) -> tuple[sql.Composable, list[Any]]:
    """A chunk's rows in a PostgreSQL table, by the key's target column name, and the parameters."""
    if chunk.key_column is None or key_target_column is None:
        return sql.SQL("TRUE"), []
    col = BoundIdentifier(key_target_column)  # the statement has parameters
    lower, upper = chunk.values()
    conds: list[sql.Composable] = []
    params: list[Any] = []
    if lower is not None:
        conds.append(sql.SQL("{} >= %s").format(col))
        params.append(lower)
    if upper is not None:
        conds.append(sql.SQL("{} < %s").format(col))
        params.append(upper)
    where: sql.Composable = sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")
    if chunk.include_nulls:
        where = sql.SQL("({}) OR {} IS NULL").format(where, col)
    return where, params
