"""Type plan and chunk plan: pure functions, checked without any database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from cm_datacopy.errors import PlanError
from cm_datacopy.postgres.sql import chunk_where
from cm_datacopy.ranges import Chunk, decode_bound, encode_bound, plan_chunks
from cm_datacopy.snowflake.scan import range_where
from cm_datacopy.typeplan import fits, map_type


@pytest.mark.parametrize(
    "sf, precision, scale, length, pg",
    [
        ("NUMBER", 38, 0, None, "numeric(38,0)"),
        ("NUMBER", 18, 0, None, "bigint"),
        ("NUMBER", 19, 0, None, "numeric(19,0)"),
        ("NUMBER", 9, 0, None, "integer"),
        ("NUMBER", 4, 0, None, "smallint"),
        ("NUMBER", 18, 4, None, "numeric(18,4)"),
        ("NUMBER", 38, 37, None, "numeric(38,37)"),
        ("FLOAT", None, None, None, "double precision"),
        ("TEXT", None, None, 16777216, "text"),
        ("TEXT", None, None, 40, "character varying(40)"),
        ("TEXT", None, None, 10485761, "text"),
        ("BINARY", None, None, None, "bytea"),
        ("BOOLEAN", None, None, None, "boolean"),
        ("DATE", None, None, None, "date"),
        ("TIME", None, None, None, "time without time zone"),
        ("TIMESTAMP_NTZ", None, None, None, "timestamp without time zone"),
        ("TIMESTAMP_TZ", None, None, None, "timestamp with time zone"),
        ("TIMESTAMP_LTZ", None, None, None, "timestamp with time zone"),
        ("VARIANT", None, None, None, "jsonb"),
        ("OBJECT", None, None, None, "jsonb"),
        ("ARRAY", None, None, None, "jsonb"),
        ("GEOGRAPHY", None, None, None, "jsonb"),
        ("GEOMETRY", None, None, None, "jsonb"),
    ],
)
def test_type_mapping(sf, precision, scale, length, pg):
    assert map_type("C", sf, precision, scale, length)[1] == pg


def test_unsupported_type_names_the_column():
    with pytest.raises(PlanError, match="column 'EMBEDDING' has Snowflake type VECTOR"):
        map_type("EMBEDDING", "VECTOR", None, None, None)


@pytest.mark.parametrize(
    "planned, existing, ok",
    [
        ("character varying(40)", "text", True),
        ("text", "character varying(40)", False),
        ("numeric(38,0)", "numeric", True),
        ("numeric(38,0)", "bigint", False),
        ("integer", "bigint", True),
        ("bigint", "integer", False),
        ("timestamp with time zone", "timestamp without time zone", False),
        ("jsonb", "json", False),
    ],
)
def test_existing_column_fits_only_if_it_keeps_every_value(planned, existing, ok):
    assert fits(planned, existing) is ok


@pytest.mark.parametrize(
    "kind, value",
    [
        ("int", 12345678901234567890123456789),
        ("decimal", Decimal("-1234.5600")),
        ("float", 0.1 + 0.2),
        ("date", dt.date(1969, 7, 20)),
        ("timestamp", dt.datetime(1901, 12, 13, 20, 45, 52, 123456)),
        ("timestamptz", dt.datetime(2024, 3, 10, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=-8)))),
    ],
)
def test_bounds_round_trip_exactly(kind, value):
    assert decode_bound(kind, encode_bound(kind, value)) == value


def test_chunks_cover_every_value_once():
    chunks = plan_chunks("s.t", "ID", "int", [10, 20, 30])
    assert [(c.lower, c.upper, c.include_nulls) for c in chunks] == [
        (None, "10", True),
        ("10", "20", False),
        ("20", "30", False),
        ("30", None, False),
    ]

    def owners(value: int | None) -> list[int]:
        found = []
        for c in chunks:
            low = c.lower is None or (value is not None and value >= int(c.lower))
            high = c.upper is None or (value is not None and value < int(c.upper))
            if (value is None and c.include_nulls) or (value is not None and low and high):
                found.append(c.index)
        return found

    for value in [None, -(10**30), 0, 9, 10, 19, 20, 29, 30, 10**30]:
        assert len(owners(value)) == 1, value


def test_table_without_key_is_one_chunk():
    assert plan_chunks("s.t", None, None, []) == [Chunk("s.t", 0)]


def test_where_clauses_bind_values_and_quote_identifiers():
    chunk = plan_chunks("s.t", 'we"ird; key', "date", [dt.date(2020, 1, 1), dt.date(2021, 1, 1)])[1]
    sf_sql, sf_params = range_where(chunk)
    assert sf_sql == '"we""ird; key" >= CAST(? AS DATE) AND "we""ird; key" < CAST(? AS DATE)'
    assert sf_params == ["2020-01-01", "2021-01-01"]
    pg_sql, pg_params = chunk_where(chunk, 'we"ird; key')
    assert pg_sql.as_string() == '"we""ird; key" >= %s AND "we""ird; key" < %s'
    assert pg_params == [dt.date(2020, 1, 1), dt.date(2021, 1, 1)]
    first_sql, _ = range_where(plan_chunks("s.t", "K", "int", [5])[0])
    assert first_sql == '("K" < ?) OR "K" IS NULL'
