"""Values that real Snowflake sends in shapes the old stand-in never did, copied by ``cm-datacopy run``.

The stand-in sends them as Snowflake does (scaled integers for NUMBER(p,s>0), scale-9 timestamp
structs, per-value TIMESTAMP_TZ offsets, results in several downloaded chunks), so the connector's
own conversion runs on them. What PostgreSQL must hold follows Snowflake's semantics: decimals exact,
digits below the microsecond truncated (never rounded: 23:59:59.999999999 stays in its day), the
instant of a TIMESTAMP_TZ kept whatever its offset. Every chunk must verify (checksums equal).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from cm_datacopy.snowflake.scan import select_expr
from cm_datacopy.typeplan import ColumnPlan
from cm_datacopy_tests.helpers import cli, pg_rows, sf_execute, write_config

UTC = dt.UTC

COLUMNS = "ID, D18, W, F, NTZ, TZ, LTZ"
# (ID, NUMBER(18,4), NUMBER(38,37), NUMBER(5,5), TIMESTAMP_NTZ, TIMESTAMP_TZ, TIMESTAMP_LTZ) as SQL literals
SOURCE_ROWS = [
    (
        "1",
        "12345678901234.5678",
        "1.2345678901234567890123456789012345678",
        "0.12345",
        "'2024-01-01 12:34:56.123456789'::TIMESTAMP_NTZ",
        "'2024-01-01 10:00:00.123456789 +05:30'::TIMESTAMP_TZ",
        "'2024-01-01 10:00:00.987654321 -08:00'::TIMESTAMP_LTZ",
    ),
    (
        "2",
        "-99999999999999.9999",
        "-9.9999999999999999999999999999999999999",
        "-0.99999",
        "'1600-01-01 00:00:00.123456789'::TIMESTAMP_NTZ",
        "'2024-06-01 10:00:00.999999999 -08:00'::TIMESTAMP_TZ",
        "'2024-06-01 10:00:00.000000999 +05:30'::TIMESTAMP_LTZ",
    ),
    (
        "3",
        "0.0001",
        "0.0000000000000000000000000000000000001",
        "0.5",
        "'2300-12-31 23:59:59.999999999'::TIMESTAMP_NTZ",
        "'1650-07-01 12:00:00.999999999 -08:00'::TIMESTAMP_TZ",
        "'2400-02-29 23:59:59.999999999 +05:30'::TIMESTAMP_LTZ",
    ),
    ("4", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"),
    (
        "5",
        "99999999999999.9999",
        "0",
        "0.00001",
        "'1969-12-31 23:59:59.999999999'::TIMESTAMP_NTZ",
        "'1970-01-01 05:29:59.9999999 +05:30'::TIMESTAMP_TZ",
        "'1500-03-01 00:00:00.000000500 -08:00'::TIMESTAMP_LTZ",
    ),
]

# What PostgreSQL must hold, by Snowflake's semantics.
EXPECTED = {
    1: (
        Decimal("12345678901234.5678"),
        Decimal("1.2345678901234567890123456789012345678"),
        Decimal("0.12345"),
        dt.datetime(2024, 1, 1, 12, 34, 56, 123456),
        dt.datetime(2024, 1, 1, 4, 30, 0, 123456, tzinfo=UTC),
        dt.datetime(2024, 1, 1, 18, 0, 0, 987654, tzinfo=UTC),
    ),
    2: (
        Decimal("-99999999999999.9999"),
        Decimal("-9.9999999999999999999999999999999999999"),
        Decimal("-0.99999"),
        dt.datetime(1600, 1, 1, 0, 0, 0, 123456),
        dt.datetime(2024, 6, 1, 18, 0, 0, 999999, tzinfo=UTC),
        dt.datetime(2024, 6, 1, 4, 30, 0, 0, tzinfo=UTC),
    ),
    3: (
        Decimal("0.0001"),
        Decimal("1E-37"),
        Decimal("0.5"),
        dt.datetime(2300, 12, 31, 23, 59, 59, 999999),
        dt.datetime(1650, 7, 1, 20, 0, 0, 999999, tzinfo=UTC),
        dt.datetime(2400, 2, 29, 18, 29, 59, 999999, tzinfo=UTC),
    ),
    4: (None, None, None, None, None, None),
    5: (
        Decimal("99999999999999.9999"),
        Decimal("0"),
        Decimal("0.00001"),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(1500, 3, 1, 8, 0, 0, 0, tzinfo=UTC),
    ),
}

FILLER_ROWS = 3_000  # with the chunk size below, each chunk's result arrives in several downloaded parts


@pytest.fixture(scope="module")
def copied(snowflake_server, tmp_path_factory):
    from cm_datacopy_tests.helpers import fresh_pg_database, new_sf_database

    if not snowflake_server.faithful:
        pytest.skip("needs the stand-in that sends Snowflake's result shapes (CM_DATACOPY_STANDIN_FAITHFUL=0 is set)")
    sf_db = new_sf_database(snowflake_server)
    values = ", ".join(f"({', '.join(row)})" for row in SOURCE_ROWS)
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE EXACT (ID NUMBER(9,0), D18 NUMBER(18,4), W NUMBER(38,37), F NUMBER(5,5), "
        "NTZ TIMESTAMP_NTZ(9), TZ TIMESTAMP_TZ(9), LTZ TIMESTAMP_LTZ(9))",
        f"INSERT INTO EXACT ({COLUMNS}) VALUES {values}",
        f"INSERT INTO EXACT ({COLUMNS}) SELECT 100 + seq8(), (seq8() * 7 - 9000) / 16, seq8() / 3001, "
        "(seq8() % 1000) / 1000, DATEADD(second, seq8() * 37, '2020-01-01'::TIMESTAMP_NTZ), "
        "DATEADD(minute, seq8(), '2021-03-28 00:00:00 +01:00'::TIMESTAMP_TZ), "
        "DATEADD(hour, seq8(), '1960-01-01 00:00:00'::TIMESTAMP_LTZ) "
        f"FROM TABLE(GENERATOR(ROWCOUNT => {FILLER_ROWS}))",
    )
    stats_before = snowflake_server.stats()["counters"]
    config = tmp_path_factory.mktemp("exact") / "cm_datacopy.yaml"
    with fresh_pg_database() as pg:
        write_config(
            config,
            snowflake_server,
            sf_db,
            pg,
            [{"source": "EXACT", "target_schema": "exact", "chunk_key": "ID", "chunk_size": 1_600}],
        )
        result = cli(config, "run", "analytics")
        yield result, pg, config, stats_before, snowflake_server.stats()["counters"]


def test_run_completes(copied):
    result, *_ = copied
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout


def test_values_are_what_snowflake_semantics_say(copied):
    _, pg, *_ = copied
    rows = pg_rows(pg, "SELECT id, d18, w, f, ntz, tz, ltz FROM exact.exact WHERE id < 100 ORDER BY id")
    assert {r[0]: tuple(r[1:]) for r in rows} == EXPECTED
    # NUMBER(p,s) keeps its scale: the text PostgreSQL holds is the full-scale decimal
    texts = pg_rows(pg, "SELECT d18::text, w::text, f::text FROM exact.exact WHERE id = 3")
    assert texts == [("0.0001", "0.0000000000000000000000000000000000001", "0.50000")]


def test_filler_rows_arrived_exactly(copied):
    _, pg, *_ = copied
    stats = pg_rows(
        pg,
        "SELECT count(*), sum(d18), sum(f), min(ntz), max(ntz), min(tz), max(ltz) FROM exact.exact WHERE id >= 100",
    )
    n = FILLER_ROWS
    seqs = range(n)
    assert stats == [
        (
            n,
            sum(Decimal(s * 7 - 9000) / 16 for s in seqs).quantize(Decimal("0.0001")),
            sum(Decimal(s % 1000) / 1000 for s in seqs).quantize(Decimal("0.00001")),
            dt.datetime(2020, 1, 1),
            dt.datetime(2020, 1, 1) + dt.timedelta(seconds=(n - 1) * 37),
            dt.datetime(2021, 3, 27, 23, 0, tzinfo=UTC),
            dt.datetime(1960, 1, 1, tzinfo=UTC) + dt.timedelta(hours=n - 1),
        )
    ]


def test_every_chunk_verified(copied):
    _, pg, config, *_ = copied
    chunks = pg_rows(
        pg,
        "SELECT count(*), bool_and(status = 'done'), bool_and(source_checksum IS NOT NULL), "
        "bool_and(source_checksum = target_checksum), sum(source_rows) FROM migration_status.migration_chunk_status",
    )
    assert chunks[0][0] >= 2
    assert chunks[0][1:] == (True, True, True, len(SOURCE_ROWS) + FILLER_ROWS)
    verify = cli(config, "verify", "analytics")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_results_arrived_as_snowflake_sends_them(copied):
    """Each chunk's rows came in downloaded result parts, as large results come from Snowflake."""
    _, pg, _, before, after = copied
    [(chunks,)] = pg_rows(pg, "SELECT count(*) FROM migration_status.migration_chunk_status")
    assert after.get("chunked_results", 0) - before.get("chunked_results", 0) >= chunks
    assert after.get("chunks_served", 0) - before.get("chunks_served", 0) >= chunks


def _connector_reads(field: pa.Field, array: pa.Array) -> pa.Array:
    """What the installed connector makes of one Snowflake result chunk (its own converter, as fetch_arrow_batches)."""
    from snowflake.connector.arrow_context import ArrowConverterContext
    from snowflake.connector.constants import IterUnit
    from snowflake.connector.result_batch import _create_nanoarrow_iterator

    schema = pa.schema([field])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch([array], schema=schema))
    iterator = _create_nanoarrow_iterator(
        sink.getvalue().to_pybytes(),
        ArrowConverterContext({"TIMEZONE": "UTC"}),
        False,
        False,
        True,
        IterUnit.TABLE_UNIT,
        True,
        True,  # force_microsecond_precision, as scan.arrow_batches
    )
    return pa.concat_tables(list(iterator)).column(0).combine_chunks()


def test_timestamps_are_read_at_scale_9_because_scaled_int64_is_misread():
    """Why ``select_expr`` casts timestamps to scale 9: a TIMESTAMP_NTZ(7) chunk as a scaled int64
    comes out of the connector (with force_microsecond_precision) as nanoseconds labelled microseconds,
    while the scale-9 struct Snowflake sends for the cast comes out exact."""
    meta = {"logicalType": "TIMESTAMP_NTZ", "precision": "0", "physicalType": "SB8", "charLength": "0"}
    scaled = _connector_reads(
        pa.field("T", pa.int64(), metadata={**meta, "scale": "7", "byteLength": "8"}), pa.array([17041124961234567])
    )
    assert scaled.type == pa.timestamp("us")
    assert scaled.cast(pa.int64()).to_pylist() == [1704112496123456700]  # 1000 times the right value
    struct = pa.StructArray.from_arrays(
        [pa.array([1704112496]), pa.array([123456700], pa.int32())],
        fields=[pa.field("epoch", pa.int64(), nullable=False), pa.field("fraction", pa.int32(), nullable=False)],
    )
    exact = _connector_reads(
        pa.field("T", struct.type, metadata={**meta, "physicalType": "SB16", "scale": "9", "byteLength": "16"}),
        struct,
    )
    assert exact.to_pylist() == [dt.datetime(2024, 1, 1, 12, 34, 56, 123456)]
    columns = [ColumnPlan("T", "t", kind, "timestamp", True) for kind in ("TIMESTAMP_NTZ", "TIMESTAMP_TZ")]
    assert [select_expr(c) for c in columns] == ['CAST("T" AS TIMESTAMP_NTZ(9))', 'CAST("T" AS TIMESTAMP_TZ(9))']
