"""Order-independent chunk checksums, computed by each database over a canonical text of each row.

Each column becomes text both databases produce identically for the same value; a NULL is ``n``,
a value is ``v<length>:<text>``; columns are joined by ``|``; the row's MD5 is cut to its first 15
hex digits (60 bits) and summed. Equal sums and counts on both sides mean the chunk arrived intact.

Canonical forms (the same on both sides by construction, checked by the tests on the stand-in):

- integers and NUMBER(p,s): the decimal text at the planned scale (``1.2300``);
- FLOAT: ``floor(x * 10^6)`` as an integer for ``|x| < 10^9`` (exact in both), ``nan``/``inf``/``-inf``,
  and only the sign beyond ``10^9``: floats are verified to 10^-6 absolute;
- DATE: days since 1970-01-01; TIME: microseconds since midnight; TIMESTAMP_*: microseconds since
  the epoch (UTC for TZ/LTZ), so zones and formats cannot differ;
- BINARY: lower-case hex; BOOLEAN: ``true``/``false``; text as is;
- VARIANT/OBJECT/ARRAY/GEOGRAPHY/GEOMETRY: NULL-ness only (jsonb normalises key order and spacing, so their
  text cannot match; their values are checked by the type fidelity tests).

Real Snowflake turns hex into a number with ``TO_NUMBER(h, 'XXX…')``; the stand-in (DuckDB) only
knows ``('0x' || h)::NUMBER``: which one is used depends on what the server is (``Session.dialect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy.postgres.sql import BoundIdentifier
from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident, sf_string
from cm_datacopy.typeplan import ColumnPlan

_INT_TYPES = {"smallint", "integer", "bigint"}
_HEX_DIGITS = 15


@dataclass(frozen=True)
class Checksum:
    rows: int
    checksum: int

    def __str__(self) -> str:
        return f"{self.rows} rows, checksum {self.checksum}"


def _sf_text(col: ColumnPlan, nul_replacement: str | None) -> str:
    c = sf_ident(col.source_name)
    pg = col.pg_type
    if pg in _INT_TYPES:
        return f"TO_VARCHAR({c})"
    if pg.startswith("numeric("):
        p, s = pg[len("numeric(") : -1].split(",")
        return f"TO_VARCHAR({c}::NUMBER({p},{s}))"
    if pg == "double precision":
        return (
            f"IFF({c} = 'NaN'::FLOAT, 'nan', IFF({c} = 'inf'::FLOAT, 'inf', IFF({c} = '-inf'::FLOAT, '-inf', "
            f"IFF(ABS({c}) < 1e9, TO_VARCHAR(FLOOR({c} * 1000000::FLOAT)::NUMBER(38,0)), "
            f"IFF({c} > 0, 'big', '-big')))))"
        )
    if pg == "boolean":
        return f"IFF({c}, 'true', 'false')"
    if pg == "date":
        return f"TO_VARCHAR(DATEDIFF(day, '1970-01-01'::DATE, {c}))"
    if pg == "time without time zone":
        return f"TO_VARCHAR(DATEDIFF(microsecond, TIME_FROM_PARTS(0, 0, 0), {c}))"
    if pg == "timestamp without time zone":
        return f"TO_VARCHAR(DATEDIFF(microsecond, '1970-01-01'::DATE, {c}))"
    if pg == "timestamp with time zone":
        return f"TO_VARCHAR(DATEDIFF(microsecond, '1970-01-01 00:00:00 +00:00'::TIMESTAMP_TZ, {c}))"
    if pg == "bytea":
        return f"LOWER(HEX_ENCODE({c}))"
    if pg in ("jsonb", "geography", "geometry"):
        return "'j'"
    if nul_replacement is not None:
        return f"REPLACE({c}, CHR(0), {sf_string(nul_replacement)})"
    return c


def _pg_text(col: ColumnPlan) -> sql.Composable:
    c = BoundIdentifier(col.target_name)  # checksum statements always carry parameters
    pg = col.pg_type
    if pg in _INT_TYPES:
        return sql.SQL("{}::text").format(c)
    if pg.startswith("numeric("):
        return sql.SQL("{}::" + pg + "::text").format(c)  # pg comes from typeplan's closed list
    if pg == "double precision":
        return sql.SQL(
            "CASE WHEN {c} = 'NaN' THEN 'nan' WHEN {c} = 'Infinity' THEN 'inf' WHEN {c} = '-Infinity' THEN '-inf' "
            "WHEN abs({c}) < 1e9 THEN floor({c} * 1000000::float8)::numeric(38,0)::text "
            "WHEN {c} > 0 THEN 'big' ELSE '-big' END"
        ).format(c=c)
    if pg == "boolean":
        return sql.SQL("CASE WHEN {} THEN 'true' ELSE 'false' END").format(c)
    if pg == "date":
        return sql.SQL("({} - date '1970-01-01')::text").format(c)
    if pg in ("time without time zone", "timestamp without time zone", "timestamp with time zone"):
        return sql.SQL("(extract(epoch FROM {}) * 1000000)::numeric(38,0)::text").format(c)
    if pg == "bytea":
        return sql.SQL("encode({}, 'hex')").format(c)
    if pg in ("jsonb", "geography", "geometry"):
        return sql.SQL("'j'")
    return c


def snowflake_row_text(columns: list[ColumnPlan], nul_replacement: str | None = None) -> str:
    parts = []
    for col in columns:
        t = _sf_text(col, nul_replacement)
        parts.append(f"IFF({sf_ident(col.source_name)} IS NULL, 'n', 'v' || LENGTH({t}) || ':' || {t})")
    return " || '|' || ".join(parts)


def postgres_row_text(columns: list[ColumnPlan]) -> sql.Composable:
    parts = [
        sql.SQL("CASE WHEN {c} IS NULL THEN 'n' ELSE 'v' || length({t}) || ':' || {t} END").format(
            c=BoundIdentifier(col.target_name), t=_pg_text(col)
        )
        for col in columns
    ]
    return sql.SQL(" || '|' || ").join(parts)


HEX_TO_NUMBER = {
    "snowflake": "TO_NUMBER({h}, '" + "X" * _HEX_DIGITS + "')",
    "standin": "('0x' || {h})::NUMBER(38,0)",
}


def snowflake_checksum_sql(
    scan: Scan, columns: list[ColumnPlan], dialect: str = "snowflake", nul_replacement: str | None = None
) -> tuple[str, list[Any]]:
    from_where, params = scan.from_where()
    number = HEX_TO_NUMBER[dialect].format(
        h=f"SUBSTR(MD5({snowflake_row_text(columns, nul_replacement)}), 1, {_HEX_DIGITS})"
    )
    return f"SELECT COUNT(*), COALESCE(SUM({number}), 0) {from_where}", params


def snowflake_checksum(
    session: Session, scan: Scan, columns: list[ColumnPlan], nul_replacement: str | None = None
) -> Checksum:
    statement, params = snowflake_checksum_sql(scan, columns, session.dialect, nul_replacement)
    rows, total = session.execute(statement, params).fetchone()
    return Checksum(int(rows), int(total))


def postgres_checksum_sql(table: sql.Identifier, columns: list[ColumnPlan], where: sql.Composable) -> sql.Composable:
    return sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || substr(md5({row}), 1, {n}))::bit({bits})::bigint), 0) "
        "FROM {table} WHERE {where}"
    ).format(
        row=postgres_row_text(columns),
        n=sql.Literal(_HEX_DIGITS),
        bits=sql.Literal(_HEX_DIGITS * 4),
        table=BoundIdentifier(*table._obj),
        where=where,
    )


def postgres_checksum(
    cur: psycopg.Cursor[Any], table: sql.Identifier, columns: list[ColumnPlan], where: sql.Composable, params: list[Any]
) -> Checksum:
    cur.execute(postgres_checksum_sql(table, columns, where), params)
    rows, total = cur.fetchone()  # type: ignore[misc]
    return Checksum(int(rows), int(total))
