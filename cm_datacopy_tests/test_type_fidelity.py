"""Type fidelity matrix: one table per Snowflake type with edge values, copied and compared value by value.

Values go through the real path: Snowflake stand-in → Arrow → COPY → PostgreSQL; the stand-in sends
them in real Snowflake's result shapes (faithful mode). Digits below the microsecond are truncated on
both sides (the Snowflake side is read with the connector's row path, which truncates). Where the stand-in
cannot hold a value (NUMBER(38,0) beyond int64: it stores BIGINT), the Arrow → COPY path is fed
the value directly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from cm_datacopy.postgres.encoder import CsvEncoder, copy_batches
from cm_datacopy.typeplan import ColumnPlan, map_type
from cm_datacopy_tests.helpers import REPO, cli, pg_rows, sf_connect, sf_execute, write_config

UTC = dt.UTC

# name: (Snowflake type, [SQL literals], expected PostgreSQL type)
MATRIX: dict[str, tuple[str, list[str], str]] = {
    "NUM38": ("NUMBER(38,0)", ["-9223372036854775808", "9223372036854775807", "0", "NULL"], "numeric"),
    "NUM_SCALE": (
        "NUMBER(38,37)",
        ["9.9999999999999999999999999999999999999", "-0.0000000000000000000000000000000000001", "NULL"],
        "numeric",
    ),
    "NUM18_4": ("NUMBER(18,4)", ["-99999999999999.9999", "0.0001", "NULL"], "numeric"),
    "NUM_P_P": ("NUMBER(5,5)", ["0.5", "-0.99999", "0.00001", "0", "NULL"], "numeric"),
    "SMALL": ("NUMBER(4,0)", ["-9999", "9999", "NULL"], "smallint"),
    "FLOATS": (
        "FLOAT",
        [
            "'NaN'::FLOAT",
            "'inf'::FLOAT",
            "'-inf'::FLOAT",
            "-0.0::FLOAT",
            "5e-324::FLOAT",
            "1.7976931348623157e308::FLOAT",
            "0.1::FLOAT",
            "NULL",
        ],
        "double precision",
    ),
    "TEXTS": (
        "VARCHAR",
        [
            "'Zoë 🚀 日本語 ελληνικά'",
            "'line1' || CHR(10) || 'line2' || CHR(13) || CHR(10) || 'x'",
            "'tab' || CHR(9) || 'bed'",
            "'quote \" and '' and , comma'",
            "'back\\\\slash \\\\N'",
            "''",
            "REPEAT('long ', 20000)",
            "NULL",
        ],
        "text",
    ),
    "SHORT": ("VARCHAR(5)", ["'abcde'", "'ü🚀'", "NULL"], "character varying"),
    "BYTES": (
        "BINARY",
        ["TO_BINARY('', 'HEX')", "TO_BINARY('00FF7F80', 'HEX')", "TO_BINARY('5C78', 'HEX')", "NULL"],
        "bytea",
    ),
    "BOOLS": ("BOOLEAN", ["TRUE", "FALSE", "NULL"], "boolean"),
    "DATES": (
        "DATE",
        ["'0001-01-01'::DATE", "'9999-12-31'::DATE", "'1969-12-31'::DATE", "'2000-02-29'::DATE", "NULL"],
        "date",
    ),
    "TIMES": (
        "TIME",
        ["'00:00:00'::TIME", "'23:59:59.999999'::TIME", "'12:00:00.5'::TIME", "NULL"],
        "time without time zone",
    ),
    "NTZ": (
        "TIMESTAMP_NTZ",
        [
            "'1500-01-01 00:00:00'::TIMESTAMP_NTZ",
            "'1969-12-31 23:59:59.999999'::TIMESTAMP_NTZ",
            "'2024-03-10 02:30:00'::TIMESTAMP_NTZ",
            "'9999-12-31 23:59:59.999999'::TIMESTAMP_NTZ",
            "'2300-12-31 23:59:59.999999999'::TIMESTAMP_NTZ",
            "'1600-01-01 00:00:00.000000001'::TIMESTAMP_NTZ",
            "NULL",
        ],
        "timestamp without time zone",
    ),
    "TZ": (
        "TIMESTAMP_TZ",
        [
            "'2024-03-10 01:59:59 -08:00'::TIMESTAMP_TZ",
            "'2024-03-10 03:00:00 -07:00'::TIMESTAMP_TZ",
            "'2024-11-03 01:30:00 -07:00'::TIMESTAMP_TZ",
            "'2024-11-03 01:30:00 -08:00'::TIMESTAMP_TZ",
            "'1900-01-01 00:00:00 +05:30'::TIMESTAMP_TZ",
            "'1969-07-20 20:17:40.5 +00:00'::TIMESTAMP_TZ",
            "'2024-06-01 10:00:00.999999999 -08:00'::TIMESTAMP_TZ",
            "NULL",
        ],
        "timestamp with time zone",
    ),
    "LTZ": (
        "TIMESTAMP_LTZ",
        ["'2024-03-10 02:30:00'::TIMESTAMP_LTZ", "'1950-06-01 12:00:00'::TIMESTAMP_LTZ", "NULL"],
        "timestamp with time zone",
    ),
    "DOCS": (
        "VARIANT",
        [
            'PARSE_JSON(\'{"big": 123456789012345678901234567890, "f": 1.5, "u": "é🚀", '
            '"nested": {"a": [1, {"b": null}], "q": "say \\\\"hi\\\\""}}\')',
            "PARSE_JSON('[1, \"two\", 3.25, true]')",
            "PARSE_JSON('\"plain string\"')",
            "PARSE_JSON('12345678901234567890')",
            "NULL",
        ],
        "jsonb",
    ),
    "OBJS": ("OBJECT", ["OBJECT_CONSTRUCT('k', 'v', 'n', 1)", "OBJECT_CONSTRUCT()", "NULL"], "jsonb"),
    "ARRS": ("ARRAY", ["PARSE_JSON('[1, [2, [3]], \"ü\"]')::ARRAY", "PARSE_JSON('[]')::ARRAY", "NULL"], "jsonb"),
}


def _normalise(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, float):
        if math.isnan(value):
            return ("nan",)
        return ("float", value, math.copysign(1, value))
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return Decimal(value)
    return value


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text, parse_float=Decimal, parse_int=Decimal)


@pytest.fixture(scope="module")
def copied(snowflake_server, tmp_path_factory):
    """Every matrix table copied in one run (module scope: one run serves all the comparisons)."""
    from cm_datacopy_tests.helpers import fresh_pg_database, new_sf_database

    sf_db = new_sf_database(snowflake_server)
    statements = ["USE SCHEMA PUBLIC"]
    for name, (sf_type, values, _) in MATRIX.items():
        statements.append(f"CREATE TABLE {name} (ID NUMBER(9,0), VAL {sf_type})")
        statements += [f"INSERT INTO {name} SELECT {i}, {v}" for i, v in enumerate(values)]
    sf_execute(snowflake_server, sf_db, *statements)
    config = tmp_path_factory.mktemp("matrix") / "cm_datacopy.yaml"
    with fresh_pg_database() as pg:
        write_config(
            config,
            snowflake_server,
            sf_db,
            pg,
            [{"source": name, "target_schema": "matrix", "chunk_key": "ID", "chunk_size": 2} for name in MATRIX],
        )
        result = cli(config, "run", "analytics")
        assert result.returncode == 0, result.stdout + result.stderr
        yield snowflake_server, sf_db, pg


@pytest.mark.parametrize("name", list(MATRIX))
def test_value_by_value(copied, name):
    snowflake_server, sf_db, pg = copied
    _sf_type, values, pg_type = MATRIX[name]
    conn = sf_connect(snowflake_server, sf_db)
    try:
        cur = conn.cursor()
        cur.execute(f'SELECT "ID", "VAL" FROM "PUBLIC"."{name}" ORDER BY "ID"')
        source = cur.fetchall()
    finally:
        conn.close()
    is_json = pg_type == "jsonb"
    target = pg_rows(
        pg,
        sql.SQL("SELECT id, {} FROM {} ORDER BY id").format(
            sql.SQL("val::text") if is_json else sql.SQL("val"), sql.Identifier("matrix", name.lower())
        ),
    )
    assert len(source) == len(values) == len(target)
    for (sid, sval), (tid, tval) in zip(source, target, strict=True):
        assert sid == tid
        if is_json:
            assert _json(tval) == _json(sval), (name, sid)
        else:
            assert _normalise(tval) == _normalise(sval), (name, sid, sval, tval)
    column_type = pg_rows(
        pg,
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'matrix' AND table_name = %s "
        "AND column_name = 'val'",
        (name.lower(),),
    )
    assert column_type == [(pg_type,)]
    checks = pg_rows(
        pg,
        "SELECT bool_and(source_checksum = target_checksum) FROM migration_status.migration_chunk_status "
        "WHERE table_key = %s",
        (f"matrix.{name.lower()}",),
    )
    assert checks == [(True,)], "the checksums agree on every chunk"


def test_json_big_numbers_are_kept_exactly(copied):
    _, _, pg = copied
    assert pg_rows(pg, "SELECT val->>'big' FROM matrix.docs WHERE id = 0") == [("123456789012345678901234567890",)]


def test_number_38_0_beyond_int64_through_arrow_and_copy(pg_db):
    """Real Snowflake returns NUMBER(38,0) beyond int64 as decimal128(38,0); the stand-in cannot hold it."""
    values = [Decimal("99999999999999999999999999999999999999"), Decimal("-12345678901234567890123456789"), None]
    batch = pa.record_batch([pa.array([1, 2, 3]), pa.array(values, pa.decimal128(38, 0))], names=["ID", "VAL"])
    columns = [
        ColumnPlan("ID", "id", "NUMBER(9,0)", "integer", True),
        ColumnPlan("VAL", "val", "NUMBER(38,0)", "numeric(38,0)", True),
    ]
    with psycopg.connect(**pg_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE big (id integer, val numeric(38,0))")
        rows, _ = copy_batches(cur, sql.Identifier("big"), CsvEncoder(columns), [batch])
        assert rows == 3
        cur.execute("SELECT val FROM big ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == values


def test_documented_mapping_table_matches_the_type_plan():
    """Every row of the mapping table in docs/how-it-works.md is what map_type returns."""
    readme = (REPO / "docs" / "how-it-works.md").read_text()
    section = readme.split("## Type mapping", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10
    checked = 0
    for row in rows:
        sf_cell, pg_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        for sf_type in re.findall(
            r"\b(TIMESTAMP_\w+|VARIANT|OBJECT|ARRAY|BINARY|VARBINARY|BOOLEAN|DATE|TIME|"
            r"FLOAT|DOUBLE|REAL|GEOGRAPHY|GEOMETRY)\b",
            sf_cell,
        ):
            planned = map_type("C", sf_type, None, None, None)[1]
            assert planned in pg_cell, (sf_type, planned, pg_cell)
            checked += 1
    assert checked >= 15
