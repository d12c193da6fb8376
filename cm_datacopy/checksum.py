"""Order-independent chunk checksums, computed by each database over a canonical text of each row.

Each column becomes text both databases produce identically for the same value; a NULL is ``n``,
a value is ``v<length>:<text>``; columns are joined by ``|``; the row's MD5 is cut to its first 15
hex digits (60 bits) and summed. Equal sums and counts on both sides mean the chunk arrived intact.

The canonical text of each kind of value is defined once, in ``CANONICAL`` below: its meaning, and the
expression that writes it in Snowflake and in PostgreSQL. The two expressions must agree on every
value; ``run/selftest.py`` checks that they do on edge values of every planned type before a run
moves a row, on whatever server the run talks to.

Values are compared as PostgreSQL holds them: timestamps and times to the microsecond, digits below
it **truncated** on both sides (Snowflake's ``DATEDIFF(microsecond, …)`` ignores them, and the
connector's ``force_microsecond_precision`` drops them before PostgreSQL sees the value).

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


@dataclass(frozen=True)
class Canonical:
    """One kind of value: what its canonical text is, and how each database writes it.

    The expressions are templates: ``{c}`` is the column, ``{p}``/``{s}`` a decimal's precision and scale.
    """

    meaning: str
    snowflake: str
    postgres: str


# Epoch microseconds of a TIMESTAMP_NTZ: DATEDIFF counts unit boundaries, so digits below the microsecond
# are ignored (truncated), as the copy path truncates them.
_SF_EPOCH_US = "TO_VARCHAR(DATEDIFF(microsecond, '1970-01-01 00:00:00'::TIMESTAMP_NTZ, {ntz}))"
_PG_EPOCH_US = "(extract(epoch FROM {c}) * 1000000)::numeric(38,0)::text"

CANONICAL: dict[str, Canonical] = {
    "integer": Canonical(
        "the integer in decimal digits, '-' first when negative",
        "TO_VARCHAR({c})",
        "{c}::text",
    ),
    "decimal": Canonical(
        "[-]<integer part, at least one digit>.<exactly s digits>: PostgreSQL's numeric text; Snowflake "
        "(and the stand-in) may print no leading zero ('.5'), so the sign, the integer part (0 when |x| < 1) "
        "and the s fraction digits are written separately, from text: no arithmetic can overflow",
        "IFF({c} < 0, '-', '') "
        "|| IFF(ABS({c}) < 1, '0', SPLIT_PART(TO_VARCHAR(ABS({c})::NUMBER({p},{s})), '.', 1)) "
        "|| '.' || RIGHT(TO_VARCHAR({c}::NUMBER({p},{s})), {s})",
        "{c}::numeric({p},{s})::text",
    ),
    "float": Canonical(
        "floor(x * 10^6) as an integer for |x| < 10^9 (exact in both), nan/inf/-inf, and only the sign "
        "beyond 10^9 (big/-big): floats are verified to 10^-6 absolute",
        "IFF({c} = 'NaN'::FLOAT, 'nan', IFF({c} = 'inf'::FLOAT, 'inf', IFF({c} = '-inf'::FLOAT, '-inf', "
        "IFF(ABS({c}) < 1e9, TO_VARCHAR(FLOOR({c} * 1000000::FLOAT)::NUMBER(38,0)), "
        "IFF({c} > 0, 'big', '-big')))))",
        # |floor(x * 10^6)| < 10^15 here: exact in int8, and the same digits as numeric, without the cost of
        # converting a float to numeric (which formats it as text first).
        "CASE WHEN {c} = 'NaN' THEN 'nan' WHEN {c} = 'Infinity' THEN 'inf' WHEN {c} = '-Infinity' THEN '-inf' "
        "WHEN abs({c}) < 1e9 THEN floor({c} * 1000000::float8)::int8::text "
        "WHEN {c} > 0 THEN 'big' ELSE '-big' END",
    ),
    "boolean": Canonical(
        "true or false",
        "IFF({c}, 'true', 'false')",
        "CASE WHEN {c} THEN 'true' ELSE 'false' END",
    ),
    "date": Canonical(
        "days since 1970-01-01",
        "TO_VARCHAR(DATEDIFF(day, '1970-01-01'::DATE, {c}))",
        "({c} - date '1970-01-01')::text",
    ),
    "time": Canonical(
        "microseconds since midnight, digits below truncated",
        "TO_VARCHAR(DATEDIFF(microsecond, TIME_FROM_PARTS(0, 0, 0), {c}))",
        _PG_EPOCH_US,
    ),
    "timestamp": Canonical(
        "microseconds since 1970-01-01 00:00:00 of the wall clock, digits below truncated",
        _SF_EPOCH_US.format(ntz="{c}"),
        _PG_EPOCH_US,
    ),
    "timestamptz": Canonical(
        "microseconds of the instant since 1970-01-01 00:00:00 UTC, digits below truncated; Snowflake "
        "converts the value to UTC first, so its own offset cannot take part in the arithmetic",
        _SF_EPOCH_US.format(ntz="CONVERT_TIMEZONE('UTC', {c})::TIMESTAMP_NTZ"),
        _PG_EPOCH_US,
    ),
    "binary": Canonical("lower-case hex", "LOWER(HEX_ENCODE({c}))", "encode({c}, 'hex')"),
    "text": Canonical("the text itself", "{c}", "{c}"),
    "json": Canonical(
        "NULL-ness only (jsonb normalises key order and spacing, so the texts cannot match; values are "
        "checked by the type fidelity tests)",
        "'j'",
        "'j'",
    ),
}


def canonical_kind(col: ColumnPlan) -> str:
    """Which ``CANONICAL`` entry writes a column, by its PostgreSQL type."""
    pg = col.pg_type
    if pg in _INT_TYPES or (pg.startswith("numeric(") and pg.endswith(",0)")):
        return "integer"
    if pg.startswith("numeric("):
        return "decimal"
    return {
        "double precision": "float",
        "boolean": "boolean",
        "date": "date",
        "time without time zone": "time",
        "timestamp without time zone": "timestamp",
        "timestamp with time zone": "timestamptz",
        "bytea": "binary",
        "jsonb": "json",
        "geography": "json",
        "geometry": "json",
    }.get(pg, "text")


def _precision_scale(col: ColumnPlan) -> tuple[int, int]:
    if not col.pg_type.startswith("numeric("):
        return 0, 0
    p, s = col.pg_type[len("numeric(") : -1].split(",")
    return int(p), int(s)


def snowflake_text(col: ColumnPlan, nul_replacement: str | None = None, column: str | None = None) -> str:
    """Snowflake's canonical text of a (non-NULL) value of ``col``; ``column``: another expression for it."""
    kind = canonical_kind(col)
    c = column or sf_ident(col.source_name)
    if kind == "text" and nul_replacement is not None:
        c = f"REPLACE({c}, CHR(0), {sf_string(nul_replacement)})"
    p, s = _precision_scale(col)
    return CANONICAL[kind].snowflake.format(c=c, p=p, s=s)


def postgres_text(col: ColumnPlan, column: sql.Composable | None = None) -> sql.Composable:
    """PostgreSQL's canonical text of a (non-NULL) value of ``col``."""
    p, s = _precision_scale(col)
    template = CANONICAL[canonical_kind(col)].postgres.format(c="{c}", p=p, s=s)  # p, s: integers
    return sql.SQL(template).format(c=column or BoundIdentifier(col.target_name))  # statements carry parameters


def snowflake_cell(col: ColumnPlan, nul_replacement: str | None = None, column: str | None = None) -> str:
    c = column or sf_ident(col.source_name)
    t = snowflake_text(col, nul_replacement, c)
    return f"IFF({c} IS NULL, 'n', 'v' || LENGTH({t}) || ':' || {t})"


def postgres_text_or_null(col: ColumnPlan, column: sql.Composable | None = None) -> sql.Composable:
    """The canonical text, NULL for a NULL value (some texts are not NULL for NULL: ``'j'``, a CASE)."""
    c = column or BoundIdentifier(col.target_name)
    return sql.SQL("CASE WHEN {c} IS NOT NULL THEN {t} END").format(c=c, t=postgres_text(col, c))


def postgres_cell_of(text: sql.Composable) -> sql.Composable:
    """The cell, from a text that is NULL exactly for a NULL value: ``n``, or ``v<length>:<text>``."""
    return sql.SQL("coalesce('v' || length({t}) || ':' || {t}, 'n')").format(t=text)


def postgres_cell(col: ColumnPlan, column: sql.Composable | None = None) -> sql.Composable:
    return postgres_cell_of(postgres_text_or_null(col, column))


def snowflake_row_text(columns: list[ColumnPlan], nul_replacement: str | None = None) -> str:
    return " || '|' || ".join(snowflake_cell(col, nul_replacement) for col in columns)


def postgres_row_text(columns: list[ColumnPlan]) -> sql.Composable:
    return sql.SQL(" || '|' || ").join(postgres_cell(col) for col in columns)


HEX_TO_NUMBER = {
    "snowflake": "TO_NUMBER({h}, '" + "X" * _HEX_DIGITS + "')",
    "standin": "('0x' || {h})::NUMBER(38,0)",
}


def snowflake_hash(text: str, dialect: str) -> str:
    """The number a row's text adds to Snowflake's sum: its MD5's first 60 bits."""
    return HEX_TO_NUMBER[dialect].format(h=f"SUBSTR(MD5({text}), 1, {_HEX_DIGITS})")


def postgres_hash(text: sql.Composable) -> sql.Composable:
    return sql.SQL("('x' || substr(md5({}), 1, {}))::bit({})::bigint").format(
        text, sql.Literal(_HEX_DIGITS), sql.Literal(_HEX_DIGITS * 4)
    )


def snowflake_checksum_sql(
    scan: Scan, columns: list[ColumnPlan], dialect: str = "snowflake", nul_replacement: str | None = None
) -> tuple[str, list[Any]]:
    from_where, params = scan.from_where()
    number = snowflake_hash(snowflake_row_text(columns, nul_replacement), dialect)
    return f"SELECT COUNT(*), COALESCE(SUM({number}), 0) {from_where}", params


def snowflake_checksum(
    session: Session, scan: Scan, columns: list[ColumnPlan], nul_replacement: str | None = None
) -> Checksum:
    statement, params = snowflake_checksum_sql(scan, columns, session.dialect, nul_replacement)
    rows, total = session.execute(statement, params).fetchone()
    return Checksum(int(rows), int(total))


def postgres_checksum_sql(table: sql.Identifier, columns: list[ColumnPlan], where: sql.Composable) -> sql.Composable:
    """The chunk's count and sum, with each column's canonical text computed once per row.

    A cell names its text twice (its length and itself) and PostgreSQL does not share the common
    expression, so written inline every conversion would run twice. The texts are computed in a
    subquery that ``OFFSET 0`` keeps from being merged into the outer query; the outer query builds
    the same cells (``postgres_cell_of``, as ``run/selftest.py`` checks them) from its columns.
    """
    texts = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(postgres_text_or_null(col), sql.Identifier(f"t{i}")) for i, col in enumerate(columns)
    )
    row_text = sql.SQL(" || '|' || ").join(postgres_cell_of(sql.Identifier("t", f"t{i}")) for i in range(len(columns)))
    return sql.SQL(
        "SELECT count(*), coalesce(sum({number}), 0) FROM (SELECT {texts} FROM {table} WHERE {where} OFFSET 0) AS t"
    ).format(number=postgres_hash(row_text), texts=texts, table=BoundIdentifier(*table._obj), where=where)


def postgres_checksum(
    cur: psycopg.Cursor[Any], table: sql.Identifier, columns: list[ColumnPlan], where: sql.Composable, params: list[Any]
) -> Checksum:
    cur.execute(postgres_checksum_sql(table, columns, where), params)
    rows, total = cur.fetchone()  # type: ignore[misc]
    return Checksum(int(rows), int(total))
