"""Binary COPY and the read-ahead thread: every type's edge values through the binary encoder into the
real PostgreSQL, the CSV fallback, and errors on either side of the helper thread.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg import sql

from cm_datacopy.chunk import ChunkTask, copy_chunk
from cm_datacopy.postgres.encoder import CsvEncoder, choose_encoder, copy_batches, encoder_for
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.resume import start_or_resume
from cm_datacopy.typeplan import ColumnPlan, plan_columns
from cm_datacopy_tests.helpers import load, pg_rows, sf_execute, write_config

UTC = dt.UTC
LA = dt.timezone(dt.timedelta(hours=-8))
BIG = Decimal("99999999999999999999999999999999999999")

# name: (Snowflake type, PostgreSQL type, Arrow type of the first batch, of the second, values)
# The values of the two batches together; the last is always None.
TYPES: dict[str, tuple[str, str, pa.DataType, pa.DataType, list[Any]]] = {
    "small": ("NUMBER(4,0)", "smallint", pa.int8(), pa.int16(), [-128, 127, -9999, None]),
    "mid": ("NUMBER(9,0)", "integer", pa.int16(), pa.int32(), [7, -32768, 999999999, None]),
    "big": ("NUMBER(18,0)", "bigint", pa.int32(), pa.int64(), [1, -(2**31), -(2**63), None]),
    "n38": ("NUMBER(38,0)", "numeric(38,0)", pa.int64(), pa.decimal128(38, 0), [2**63 - 1, -(2**63), BIG, None]),
    "n38s": (
        "NUMBER(38,37)",
        "numeric(38,37)",
        pa.decimal128(38, 37),
        pa.decimal128(38, 37),
        [Decimal("9.9999999999999999999999999999999999999"), Decimal("-1E-37"), Decimal("0E-37"), None],
    ),
    "n18": (
        "NUMBER(18,2)",
        "numeric(18,2)",
        pa.decimal128(18, 2),
        pa.decimal128(18, 2),
        [Decimal("-9999999999999999.99"), Decimal("0.01"), Decimal("1.10"), None],
    ),
    "n5": (
        "NUMBER(5,5)",
        "numeric(5,5)",
        pa.decimal128(5, 5),
        pa.decimal128(5, 5),
        [Decimal("-0.99999"), Decimal("0.00001"), Decimal("0.50000"), None],
    ),
    "f": ("FLOAT", "double precision", pa.float64(), pa.float64(), [math.nan, math.inf, -math.inf, None]),
    "f2": ("FLOAT", "double precision", pa.float32(), pa.float64(), [-0.0, 0.5, 5e-324, None]),
    "txt": ("VARCHAR(16777216)", "text", pa.string(), pa.large_string(), ["Zoë 🚀\n\r\t\"',", "\\N", "", None]),
    "code": ("VARCHAR(5)", "character varying(5)", pa.string(), pa.string(), ["abcde", "ü🚀", "\\", None]),
    "bin": ("BINARY", "bytea", pa.binary(), pa.large_binary(), [b"\x00\xff\x7f\x80", b"", b"\\x", None]),
    "flag": ("BOOLEAN", "boolean", pa.bool_(), pa.bool_(), [True, False, True, None]),
    "day": (
        "DATE",
        "date",
        pa.date32(),
        pa.date64(),
        [dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1969, 12, 31), None],
    ),
    "tm": (
        "TIME",
        "time without time zone",
        pa.time64("us"),
        pa.time64("ns"),
        [dt.time(0), dt.time(23, 59, 59, 999999), dt.time(12, 0, 0, 500000), None],
    ),
    "ntz": (
        "TIMESTAMP_NTZ",
        "timestamp without time zone",
        pa.timestamp("us"),
        pa.timestamp("ns"),
        [
            dt.datetime(1, 1, 1),
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
            None,
        ],
    ),
    "tz": (
        "TIMESTAMP_TZ",
        "timestamp with time zone",
        pa.timestamp("us", tz="UTC"),
        pa.timestamp("us", tz="-08:00"),
        [
            dt.datetime(1, 1, 1, tzinfo=UTC),
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            dt.datetime(2024, 11, 3, 1, 30, tzinfo=LA),
            None,
        ],
    ),
    "doc": (
        "VARIANT",
        "jsonb",
        pa.string(),
        pa.large_string(),
        ['{"big": 123456789012345678901234567890, "u": "é🚀"}', '[1, "two", 3.25, true]', '"plain"', None],
    ),
}


def _columns(names: list[str], pg_types: dict[str, str] | None = None) -> list[ColumnPlan]:
    return [ColumnPlan(n.upper(), n, TYPES[n][0], (pg_types or {}).get(n, TYPES[n][1]), True) for n in names]


def _batches() -> list[pa.RecordBatch]:
    """Two batches whose Arrow types differ per column, as Snowflake's result chunks may."""
    out = []
    for part, rows in ((2, slice(0, 2)), (3, slice(2, 4))):
        arrays = [pa.array(range(rows.start, rows.stop), pa.int32())]
        for _, _, first, second, values in TYPES.values():
            chunk = values[rows]
            if part == 3 and second in (pa.time64("ns"), pa.timestamp("ns")):
                # Nanoseconds: the digits below the microsecond are dropped (truncated, never rounded up).
                micros = pa.array(chunk, first).cast(pa.int64())
                arrays.append(pc.add(pc.multiply(micros, 1000), 999).cast(second))
            else:
                arrays.append(pa.array(chunk, first if part == 2 else second))
        out.append(pa.record_batch(arrays, names=["ID", *[n.upper() for n in TYPES]]))
    return out


def _create(cur: psycopg.Cursor[Any], columns: list[ColumnPlan]) -> None:
    cur.execute(
        sql.SQL("CREATE TABLE t (id integer, {})").format(
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.target_name), sql.SQL(c.pg_type)) for c in columns
            )
        )
    )


def test_every_types_edge_values_round_trip_through_binary_copy(pg_db):
    columns = [ColumnPlan("ID", "id", "NUMBER(9,0)", "integer", True), *_columns(list(TYPES))]
    with psycopg.connect(**pg_db) as conn, conn.cursor() as cur:
        _create(cur, columns[1:])
        encoder = encoder_for(cur, sql.Identifier("t"), columns)
        assert encoder.format == "binary"
        rows, nbytes = copy_batches(cur, sql.Identifier("t"), encoder, _batches())
        assert rows == 4 and nbytes > 0
        cur.execute(sql.SQL("SELECT * FROM t ORDER BY id"))
        stored = cur.fetchall()
        cur.execute("SELECT doc->>'big', doc->>'u' FROM t WHERE id = 0")
        assert cur.fetchone() == ("123456789012345678901234567890", "é🚀")
    for i, name in enumerate(TYPES, start=1):
        expected = TYPES[name][4]
        got = [row[i] for row in stored]
        if name == "doc":
            expected = [None if v is None else json.loads(v) for v in expected]
        assert got[-1] is None, name
        for g, e in zip(got[:-1], expected[:-1], strict=True):
            if isinstance(e, float) and math.isnan(e):
                assert math.isnan(g), name
            elif isinstance(e, float):
                assert g == e and math.copysign(1, g) == math.copysign(1, e), name
            elif isinstance(e, bytes):
                assert bytes(g) == e, name
            else:
                assert g == e and (not isinstance(e, Decimal) or str(g) == str(e)), (name, g, e)  # scale kept


def test_an_empty_copy_is_valid_in_binary(pg_db):
    columns = _columns(["big", "txt"])
    with psycopg.connect(**pg_db) as conn, conn.cursor() as cur:
        _create(cur, columns)
        encoder = encoder_for(
            cur, sql.Identifier("t"), [ColumnPlan("ID", "id", "NUMBER(9,0)", "integer", True), *columns]
        )
        assert copy_batches(cur, sql.Identifier("t"), encoder, []) == (0, 19 + 2)  # the header and the trailer
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (0,)


def test_a_column_without_a_binary_form_goes_as_csv(pg_db, caplog):
    """The target's own column type decides: citext has no wire form here, so the table goes as CSV."""
    spatial = plan_columns([("ID", "NUMBER", 9, 0, None, "YES"), ("SHAPE", "GEOGRAPHY", None, None, None, "YES")], True)
    assert isinstance(choose_encoder(spatial), CsvEncoder)  # PostGIS reads EWKT text, not WKB
    columns = [
        ColumnPlan("ID", "id", "NUMBER(9,0)", "integer", True),
        ColumnPlan("NAME", "name", "VARCHAR(9)", "text", True),
    ]
    batch = pa.record_batch([pa.array([1, 2]), pa.array(["Ünïcode", None])], names=["ID", "NAME"])
    caplog.set_level(logging.DEBUG, logger="cm_datacopy.postgres.encoder")
    with psycopg.connect(**pg_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS citext; CREATE TABLE t (id integer, name citext)")
        assert encoder_for(cur, sql.Identifier("t"), columns[:1]).format == "binary"
        encoder = encoder_for(cur, sql.Identifier("t"), columns)
        assert encoder.format == "csv"
        assert copy_batches(cur, sql.Identifier("t"), encoder, [batch])[0] == 2
        cur.execute("SELECT id, name::text FROM t ORDER BY id")
        assert cur.fetchall() == [(1, "Ünïcode"), (2, None)]
    assert "no binary form for column(s) name" in caplog.text
    assert "2 rows" in caplog.text and "in csv format" in caplog.text


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cm-datacopy-prefetch"]


class _Source:
    """Batches that fail on the n-th fetch (as a dropped Snowflake connection would); records its closing."""

    def __init__(self, fail_at: int | None, batches: int = 5) -> None:
        self.fail_at, self.batches, self.closed, self.fetched = fail_at, batches, False, 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for i in range(self.batches):
                if i == self.fail_at:
                    raise ConnectionResetError("connection reset while fetching a result chunk")
                self.fetched += 1
                yield pa.record_batch([pa.array([i]), pa.array(["x" * (3 if i < 3 else 9)])], names=["ID", "NAME"])
        finally:
            self.closed = True


@pytest.mark.parametrize("side", ["fetch", "postgres"])
def test_an_error_on_either_side_of_the_helper_thread_fails_the_copy_and_leaves_no_thread(pg_db, side):
    """The fetch thread's error is raised in the caller's thread; PostgreSQL's error stops the fetch thread."""
    columns = [
        ColumnPlan("ID", "id", "NUMBER(9,0)", "integer", True),
        ColumnPlan("NAME", "name", "VARCHAR(5)", "character varying(5)", True),
    ]
    source = _Source(fail_at=1 if side == "fetch" else None, batches=500)
    before = _prefetch_threads()
    with psycopg.connect(**pg_db) as conn:
        conn.execute("CREATE TABLE t (id integer, name varchar(5))")
        conn.commit()
        expected = ConnectionResetError if side == "fetch" else psycopg.errors.StringDataRightTruncation
        with pytest.raises(expected), conn.transaction(), conn.cursor() as cur:
            copy_batches(cur, sql.Identifier("t"), choose_encoder(columns), source)
        assert pg_rows(pg_db, "SELECT count(*) FROM t") == [(0,)]
    assert _prefetch_threads() == before == []
    assert source.closed, "the helper closed the source iterable (its Snowflake cursor) itself"
    # PostgreSQL reports a bad value when the COPY ends, so only a fetch error ends the stream early.
    assert source.fetched == (1 if side == "fetch" else 500)


def test_a_chunk_says_its_format_and_a_fetch_thread_error_fails_it_cleanly(
    snowflake_server, sf_db, pg_db, tmp_path, caplog
):
    """Through copy_chunk: a NUL byte refused on the helper thread fails the chunk; the next chunk copies in binary."""
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "CREATE TABLE NOTES (ID NUMBER(9,0), BODY VARCHAR, AMOUNT NUMBER(18,2), DOC VARIANT)",
        "INSERT INTO NOTES SELECT 1, 'fine', 1.10, PARSE_JSON('{\"a\": 1}')",
        "INSERT INTO NOTES SELECT 2, 'also fine', NULL, NULL",
        "INSERT INTO NOTES SELECT 3, 'no nul yet', -0.01, PARSE_JSON('[]')",
    )
    config = write_config(
        tmp_path / "cm_datacopy.yaml",
        snowflake_server,
        sf_db,
        pg_db,
        [{"source": "NOTES", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 2, "mode": "in_place"}],
    )
    cfg = load(config).source("analytics")
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        run = start_or_resume(cfg, pg)
        chunks = Ledger().chunks(pg, run.run_id)
    assert len(chunks) >= 2
    # The source changes after the plan (whose profile refuses NUL bytes); the copy refuses it on its own.
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "UPDATE NOTES SET BODY = 'nul' || CHR(0) WHERE ID = 3")
    caplog.set_level(logging.DEBUG, logger="cm_datacopy.postgres.encoder")
    results = [copy_chunk(cfg, ChunkTask(cfg.name, run.run_id, c.table_key, c.index)) for c in chunks]
    failed = [r for r in results if r.outcome == "failed"]
    assert len(failed) == 1 and "NUL byte" in (failed[0].error or "") and not failed[0].retryable
    assert [r.outcome for r in results].count("copied") == len(chunks) - 1
    assert _prefetch_threads() == []
    assert "in binary format" in caplog.text
    assert pg_rows(pg_db, "SELECT id, body, amount::text, doc FROM copy.notes WHERE id < 3 ORDER BY id") == [
        (1, "fine", "1.10", {"a": 1}),
        (2, "also fine", None, None),
    ]
