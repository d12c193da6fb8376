"""Snowflake column types → PostgreSQL column types that keep every value.

The PostgreSQL type names are written exactly as ``format_type()`` prints them, so the same string
creates a column and compares with an existing one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from cm_datacopy.errors import PlanError

# PostgreSQL's varchar limit; longer Snowflake VARCHARs (the default is 16,777,216) become text.
_PG_VARCHAR_MAX = 10_485_760
_SNOWFLAKE_VARCHAR_DEFAULT = 16_777_216

KeyKind = Literal["int", "decimal", "float", "date", "timestamp", "timestamptz"]


@dataclass(frozen=True)
class ColumnPlan:
    """One column: where it comes from, what it becomes, and how it crosses over."""

    source_name: str
    target_name: str
    snowflake_type: str
    pg_type: str
    nullable: bool
    encoding: Literal["plain", "binary", "json"] = "plain"

    @property
    def key_kind(self) -> KeyKind | None:
        """How a chunk bound of this column is stored and bound; None: not usable as a chunk key."""
        base = self.snowflake_type.split("(")[0]
        if base == "NUMBER":
            return "int" if self.snowflake_type.endswith(",0)") else "decimal"
        return {
            "FLOAT": "float",
            "DATE": "date",
            "TIMESTAMP_NTZ": "timestamp",
            "TIMESTAMP_TZ": "timestamptz",
            "TIMESTAMP_LTZ": "timestamptz",
        }.get(base)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ColumnPlan:
        return cls(**data)


def target_column_name(source_name: str) -> str:
    """Unquoted Snowflake names are stored upper case; PostgreSQL's convention is lower case."""
    return source_name.lower() if source_name.isupper() else source_name


def map_type(
    column: str,
    data_type: str,
    precision: int | None,
    scale: int | None,
    char_length: int | None,
    postgis: bool = False,
) -> tuple[str, str, Literal["plain", "binary", "json"]]:
    """(normalised Snowflake type, PostgreSQL type, encoding) for one INFORMATION_SCHEMA row.

    ``postgis``: the target has the PostGIS extension, so spatial types keep their own types.
    """
    t = data_type.upper()
    if t in {"NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "BYTEINT"}:
        p = 38 if precision is None else int(precision)
        s = 0 if scale is None else int(scale)
        sf = f"NUMBER({p},{s})"
        if s == 0 and p <= 4:
            return sf, "smallint", "plain"
        if s == 0 and p <= 9:
            return sf, "integer", "plain"
        if s == 0 and p <= 18:
            return sf, "bigint", "plain"
        return sf, f"numeric({p},{s})", "plain"
    if t in {"FLOAT", "FLOAT4", "FLOAT8", "DOUBLE", "DOUBLE PRECISION", "REAL"}:
        return "FLOAT", "double precision", "plain"
    if t in {"TEXT", "VARCHAR", "STRING", "CHAR", "CHARACTER", "NCHAR", "NVARCHAR"}:
        n = _SNOWFLAKE_VARCHAR_DEFAULT if char_length is None else int(char_length)
        pg = "text" if n >= _SNOWFLAKE_VARCHAR_DEFAULT or n > _PG_VARCHAR_MAX else f"character varying({n})"
        return f"VARCHAR({n})", pg, "plain"
    if t in {"BINARY", "VARBINARY"}:
        return "BINARY", "bytea", "binary"
    if t == "BOOLEAN":
        return "BOOLEAN", "boolean", "plain"
    if t == "DATE":
        return "DATE", "date", "plain"
    if t == "TIME":
        return "TIME", "time without time zone", "plain"
    if t in {"TIMESTAMP_NTZ", "DATETIME", "TIMESTAMP"}:
        return "TIMESTAMP_NTZ", "timestamp without time zone", "plain"
    if t in {"TIMESTAMP_TZ", "TIMESTAMP_LTZ"}:
        return t, "timestamp with time zone", "plain"
    if t in {"VARIANT", "OBJECT", "ARRAY"}:
        return t, "jsonb", "json"
    if t in {"GEOGRAPHY", "GEOMETRY"}:
        if postgis:
            return t, t.lower(), "plain"
        return t, "jsonb", "json"
    raise PlanError(
        f"column {column!r} has Snowflake type {data_type}, which cm_datacopy cannot copy faithfully; "
        "exclude the table or cast the column in a Snowflake view"
    )


def plan_columns(rows: list[tuple[Any, ...]], postgis: bool = False) -> list[ColumnPlan]:
    """Rows of (name, data_type, precision, scale, char_length, is_nullable) in ordinal order."""
    plans = []
    for name, data_type, precision, scale, char_length, is_nullable in rows:
        sf, pg, encoding = map_type(name, data_type, precision, scale, char_length, postgis)
        plans.append(
            ColumnPlan(
                source_name=name,
                target_name=target_column_name(name),
                snowflake_type=sf,
                pg_type=pg,
                nullable=str(is_nullable).upper() in {"YES", "Y", "TRUE"},
                encoding=encoding,
            )
        )
    return plans


# A target column of one of these types holds every value of the planned type without a cast.
_WIDER: dict[str, set[str]] = {
    "smallint": {"integer", "bigint", "numeric"},
    "integer": {"bigint", "numeric"},
    "bigint": {"numeric"},
}


def fits(planned: str, existing: str) -> bool:
    """Whether an existing target column type keeps every value of the planned type."""
    if planned == existing:
        return True
    if planned.startswith("character varying") and existing == "text":
        return True
    if planned.startswith("numeric(") and existing == "numeric":
        return True
    if planned in ("geography", "geometry") and existing.startswith(planned):
        return True
    return existing in _WIDER.get(planned, set())
