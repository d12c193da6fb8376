"""The rows of a chunk in Snowflake: ``FROM <table> AT(<run start>) WHERE <key range>``, built here only.

Every query that reads a chunk's rows — the copy, its checksum, ``verify`` and its bisection — takes
a ``Scan``, so the table, the Time Travel point and the key range cannot differ between them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import pyarrow as pa

from cm_datacopy.ranges import Chunk
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy.typeplan import ColumnPlan


def at_clause(snapshot_at: dt.datetime | None) -> tuple[str, list[Any]]:
    """Time Travel: every chunk of a run reads the table as it was when the run started."""
    if snapshot_at is None:
        return "", []
    return " AT(TIMESTAMP => CAST(? AS TIMESTAMP_TZ))", [snapshot_at.isoformat(sep=" ")]


def bind_key(kind: str | None, value: Any) -> tuple[str, Any]:
    """A placeholder and its parameter for a key value of ``kind``.

    Dates, timestamps and decimals go as text cast in SQL: the connector's own binding drops time
    zones, and a bound ``Decimal`` is refused by the stand-in.
    """
    if kind == "decimal":
        number = Decimal(value)
        scale = max(0, -int(number.as_tuple().exponent))
        return f"CAST(? AS NUMBER(38, {min(scale, 38)}))", format(number, "f")
    if kind == "date":
        return "CAST(? AS DATE)", value.isoformat()
    if kind == "timestamp":
        return "CAST(? AS TIMESTAMP_NTZ)", value.isoformat(sep=" ")
    if kind == "timestamptz":
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return "CAST(? AS TIMESTAMP_TZ)", aware.isoformat(sep=" ")
    if kind == "float":
        return "?", float(value)
    if kind == "int":
        return "?", int(value)
    return "?", value


def range_where(chunk: Chunk | None) -> tuple[str, list[Any]]:
    """The chunk's key range as a Snowflake predicate with ``?`` placeholders, and its parameters."""
    if chunk is None or chunk.key_column is None:
        return "TRUE", []
    col = sf_ident(chunk.key_column)
    conds, params = [], []
    for op, value in zip((">=", "<"), chunk.values(), strict=True):
        if value is not None:
            placeholder, param = bind_key(chunk.key_kind, value)
            conds.append(f"{col} {op} {placeholder}")
            params.append(param)
    where = " AND ".join(conds) or "TRUE"
    if chunk.include_nulls:
        where = f"({where}) OR {col} IS NULL"
    return where, params


def select_expr(col: ColumnPlan) -> str:
    """How Snowflake must return a column so PostgreSQL can take it."""
    c = sf_ident(col.source_name)
    if col.snowflake_type in ("GEOGRAPHY", "GEOMETRY"):
        # PostGIS parses EWKT ('SRID=4326;POINT(…)'); jsonb takes GeoJSON.
        return f"ST_ASGEOJSON({c})" if col.pg_type == "jsonb" else f"ST_ASEWKT({c})"
    if col.snowflake_type in ("TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIMESTAMP_TZ"):
        # At scale 9 Snowflake sends {epoch, fraction[, timezone]} structs, which the connector truncates to
        # microseconds exactly. A column declared with scale 7 or 8 may come as a scaled int64 (or a TZ
        # struct of 8 bytes), which connector 4.x labels microseconds while it still holds nanoseconds
        # under force_microsecond_precision.
        return f"CAST({c} AS {col.snowflake_type}(9))"
    return c


@dataclass(frozen=True)
class Scan:
    """One chunk of one table (or the whole table: ``chunk`` None) as of ``snapshot_at``."""

    table: str  # the quoted three-part name
    snapshot_at: dt.datetime | None = None
    chunk: Chunk | None = None

    def from_where(self, extra: str = "") -> tuple[str, list[Any]]:
        """``FROM … AT(…) WHERE (range) [AND extra]`` and its parameters, in placeholder order."""
        at, at_params = at_clause(self.snapshot_at)
        where, params = range_where(self.chunk)
        condition = f"({where}) AND ({extra})" if extra else where
        return f"FROM {self.table}{at} WHERE {condition}", [*at_params, *params]

    def narrowed(self, lower: str | None, upper: str | None, include_nulls: bool) -> Scan:
        """A part of this chunk's range (``verify`` bisects a chunk by key)."""
        assert self.chunk is not None
        return replace(self, chunk=replace(self.chunk, lower=lower, upper=upper, include_nulls=include_nulls))

    def select_sql(self, columns: list[ColumnPlan]) -> tuple[str, list[Any]]:
        from_where, params = self.from_where()
        return f"SELECT {', '.join(_named(select_expr(c), c) for c in columns)} {from_where}", params


def _named(expr: str, col: ColumnPlan) -> str:
    """A column read through an expression keeps its name."""
    c = sf_ident(col.source_name)
    return expr if expr == c else f"{expr} AS {c}"


def read_batches(session: Session, scan: Scan, columns: list[ColumnPlan]) -> Iterator[pa.RecordBatch]:
    """Run the chunk's query now; its Arrow batches stream as they are consumed.

    ``force_microsecond_precision``: timestamps arrive truncated to microseconds, as PostgreSQL keeps
    them and as Snowflake's own ``DATEDIFF(microsecond, …)`` in the checksum counts them, and values
    outside 1677–2262 with sub-microsecond digits do not overflow the connector's nanosecond conversion.
    """
    statement, params = scan.select_sql(columns)
    return arrow_batches(session.execute(statement, params))


def arrow_batches(cur: Any) -> Iterator[pa.RecordBatch]:
    """A query's result as Arrow record batches, converted as every copied row is (see ``read_batches``).

    Batches of one result may differ in type (Snowflake sizes each result chunk's integers by its values:
    int16 in one, int32 in the next), so they are used one by one, never concatenated uncast.
    """
    for table in cur.fetch_arrow_batches(force_microsecond_precision=True):
        yield from table.to_batches()


def count_rows(session: Session, scan: Scan) -> int:
    from_where, params = scan.from_where()
    return int(session.execute(f"SELECT COUNT(*) {from_where}", params).fetchone()[0])
