"""The stand-in's faithful mode: the real snowflake-connector-python reads what real Snowflake would send.

Each test states a fact about Snowflake's result shapes or the connector's handling of them (and so
why cm_datacopy sets what it sets); the legacy mode (fakesnow's own shapes) is checked to be unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import time
from decimal import Decimal

import pyarrow as pa
import pytest
import snowflake.connector
from snowflake.connector.cursor import SnowflakeCursor
from snowflake.connector.errors import ProgrammingError

from cm_datacopy.standin import snowflake as standin

PASSWORD = "faithful-test-password"
DB, SCHEMA = "FAITHFUL", "T"
SETTINGS = standin.FaithfulSettings(first_chunk_rows=1000, chunk_rows=20_000, batch_rows=5_000, progress_after=2)

NS_2024 = 1704112496123456789  # 2024-01-01 12:34:56.123456789
TZ_UTC = "Etc/UTC"  # the TIMEZONE the stand-in reports (fakesnow)


@pytest.fixture(scope="module")
def faithful(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("faithful")
    with standin.running(PASSWORD, workdir, faithful=True, settings=SETTINGS) as where:
        with connect(where, database=None, schema=None) as conn:
            cur = conn.cursor()
            cur.execute(f"create database if not exists {DB}")
            cur.execute(f"create schema if not exists {DB}.{SCHEMA}")
            cur.execute(f"use schema {DB}.{SCHEMA}")
            cur.execute(
                "create or replace table numbers"
                " (k int, n number(18,4), w number(38,37), f number(5,5), i number(38,0))"
            )
            cur.execute(
                "insert into numbers values "
                "(1, 12345678901234.5678, 1.2345678901234567890123456789012345678, 0.12345, 7), "
                "(2, -99999999999999.9999, -9.9999999999999999999999999999999999999, -0.99999, -100000), "
                "(3, null, null, null, null)"
            )
            cur.execute("create or replace table ts (k int, ntz timestamp_ntz, tz timestamp_tz, ltz timestamp_ltz)")
            cur.execute(
                "insert into ts values "
                "(1, '2024-01-01 12:34:56.123456789'::timestamp_ntz,"
                " '2024-01-01 10:00:00.123456789 +05:30'::timestamp_tz,"
                " '2024-01-01 10:00:00.987654321 -08:00'::timestamp_ltz), "
                "(2, '2024-01-01 12:34:56.5'::timestamp_ntz, '2024-06-01 10:00:00 -08:00'::timestamp_tz,"
                " '2024-06-01 10:00:00 +05:30'::timestamp_ltz), "
                "(3, null, null, null)"
            )
            cur.execute("create or replace table far (k int, ntz timestamp_ntz)")
            cur.execute(
                "insert into far values (1, '1600-01-01 00:00:00.123456789'::timestamp_ntz), "
                "(2, '2300-12-31 23:59:59.999999999'::timestamp_ntz), (3, null)"
            )
            cur.execute("create or replace table far_us (k int, ntz timestamp_ntz)")
            cur.execute("insert into far_us values (1, '1600-01-01 00:00:00.123456'::timestamp_ntz), (2, null)")
        yield where


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory):
    with standin.running(PASSWORD, tmp_path_factory.mktemp("legacy"), faithful=False) as where:
        yield where


def connect(where, database: str | None = DB, schema: str | None = SCHEMA, **extra):
    kwargs = where.connect_kwargs(paramstyle="qmark", **extra)
    if database:
        kwargs.update(database=database, schema=schema)
    return snowflake.connector.connect(**kwargs)


def arrow(cur: SnowflakeCursor, sql: str, params=None, **fetch) -> tuple[pa.Table, list[pa.Table]]:
    cur.execute(sql, params)
    tables = list(cur.fetch_arrow_batches(**fetch))
    return pa.concat_tables(tables, promote_options="permissive"), tables


def wire_schema(cur: SnowflakeCursor) -> pa.Schema:
    """The Arrow schema the stand-in actually sent in the inline first chunk."""
    return pa.ipc.open_stream(base64.b64decode(cur._result_set.batches[0]._data)).schema


def meta(field: pa.Field) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}


# --- 1. NUMBER / FIXED ------------------------------------------------------------------------


def test_wire_format_numbers(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        cur.execute("select n, w, f, i from numbers order by k")
        schema = wire_schema(cur)
    assert schema.field("N").type == pa.int64()
    assert meta(schema.field("N")) == {
        "logicalType": "FIXED",
        "precision": "18",
        "scale": "4",
        "physicalType": "SB8",
        "charLength": "0",
        "byteLength": "8",
    }
    assert schema.field("W").type == pa.decimal128(38, 37)  # does not fit int64: decimal128, SB16
    assert meta(schema.field("W"))["physicalType"] == "SB16"
    assert schema.field("F").type == pa.int32()  # 99999 needs 32 bits
    assert schema.field("I").type == pa.int32()  # NUMBER(38,0) sized by the values (-100000)


def test_number_18_4_is_float_without_arrow_number_to_decimal(faithful):
    with connect(faithful) as conn:
        table, _ = arrow(conn.cursor(), "select n from numbers order by k")
        rows = conn.cursor().execute("select n from numbers order by k").fetchall()
    assert table.schema.field("N").type == pa.float64()
    assert table.column("N").to_pylist() == [12345678901234.568, -100000000000000.0, None]
    assert table.column("N").to_pylist()[0] == float("12345678901234.5678")
    # the row path (fetchone/fetchall) builds Decimal from the scaled integer either way
    assert [r[0] for r in rows] == [Decimal("12345678901234.5678"), Decimal("-99999999999999.9999"), None]


def test_number_18_4_is_exact_decimal_with_arrow_number_to_decimal(faithful):
    with connect(faithful, arrow_number_to_decimal=True) as conn:
        table, _ = arrow(conn.cursor(), "select n from numbers order by k")
    assert table.schema.field("N").type == pa.decimal128(38, 4)  # the connector widens to precision 38
    assert table.column("N").to_pylist() == [Decimal("12345678901234.5678"), Decimal("-99999999999999.9999"), None]


@pytest.mark.parametrize("to_decimal", [False, True])
def test_number_38_37_full_scale(faithful, to_decimal):
    with connect(faithful, arrow_number_to_decimal=to_decimal) as conn:
        cur = conn.cursor()
        table, _ = arrow(cur, "select w from numbers order by k")
        small, _ = arrow(cur, "select 0.0000000000000000000000000000000000001::number(38,37) as w")
        rows = cur.execute("select w from numbers order by k").fetchall()
    # decimal128 on the wire passes through the connector unchanged, flag or not
    assert table.schema.field("W").type == pa.decimal128(38, 37)
    assert table.column("W").to_pylist() == [
        Decimal("1.2345678901234567890123456789012345678"),
        Decimal("-9.9999999999999999999999999999999999999"),
        None,
    ]
    assert [r[0] for r in rows] == table.column("W").to_pylist()
    # a chunk whose values fit int64 is int-backed, so the flag decides again
    if to_decimal:
        assert small.schema.field("W").type == pa.decimal128(38, 37)
        assert small.column("W").to_pylist() == [Decimal("1E-37")]
    else:
        assert small.schema.field("W").type == pa.float64()
        assert small.column("W").to_pylist() == [1e-37]


@pytest.mark.parametrize("to_decimal", [False, True])
def test_number_5_5(faithful, to_decimal):
    with connect(faithful, arrow_number_to_decimal=to_decimal) as conn:
        table, _ = arrow(conn.cursor(), "select f from numbers order by k")
    if to_decimal:
        assert table.schema.field("F").type == pa.decimal128(38, 5)
        assert table.column("F").to_pylist() == [Decimal("0.12345"), Decimal("-0.99999"), None]
    else:
        assert table.schema.field("F").type == pa.float64()
        assert table.column("F").to_pylist() == [0.12345, -0.99999, None]


# --- 2. TIMESTAMP_NTZ / LTZ ---------------------------------------------------------------------


def test_wire_format_timestamps(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        cur.execute("select ntz, tz, ltz from ts order by k")
        schema = wire_schema(cur)
        kinds = [d.type_code for d in cur.description]
    assert schema.field("NTZ").type == pa.struct(
        [pa.field("epoch", pa.int64(), nullable=False), pa.field("fraction", pa.int32(), nullable=False)]
    )
    assert meta(schema.field("NTZ")) == {
        "logicalType": "TIMESTAMP_NTZ",
        "precision": "0",
        "scale": "9",
        "physicalType": "SB16",
        "charLength": "0",
        "byteLength": "16",
    }
    assert [f.name for f in schema.field("TZ").type] == ["epoch", "fraction", "timezone"]
    assert meta(schema.field("TZ"))["byteLength"] == "16"  # 16: three-field struct, read by the connector
    assert meta(schema.field("LTZ"))["logicalType"] == "TIMESTAMP_LTZ"
    assert kinds == [8, 7, 6]  # TIMESTAMP_NTZ, TIMESTAMP_TZ, TIMESTAMP_LTZ in the connector's FIELD_TYPES


def test_ntz_keeps_nanoseconds(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        table, _ = arrow(cur, "select ntz from ts order by k")
        micro, _ = arrow(cur, "select ntz from ts order by k", force_microsecond_precision=True)
        rows = cur.execute("select ntz from ts order by k").fetchall()
    assert table.schema.field("NTZ").type == pa.timestamp("ns")
    assert [v.value if v.is_valid else None for v in table.column("NTZ")] == [NS_2024, 1704112496500000000, None]
    assert micro.schema.field("NTZ").type == pa.timestamp("us")  # truncated, not rounded
    assert micro.column("NTZ").to_pylist()[0] == dt.datetime(2024, 1, 1, 12, 34, 56, 123456)
    assert rows[0][0] == dt.datetime(2024, 1, 1, 12, 34, 56, 123456)  # Python datetime: microseconds
    assert rows[2][0] is None


def test_ntz_outside_1677_2262(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        with pytest.raises(OverflowError, match="overflows int64 range"):
            arrow(cur, "select ntz from far order by k")
        forced, _ = arrow(cur, "select ntz from far order by k", force_microsecond_precision=True)
        rows = cur.execute("select ntz from far order by k").fetchall()
        whole_us, _ = arrow(cur, "select ntz from far_us order by k")
    assert forced.schema.field("NTZ").type == pa.timestamp("us")
    assert forced.column("NTZ").to_pylist() == [
        dt.datetime(1600, 1, 1, 0, 0, 0, 123456),
        dt.datetime(2300, 12, 31, 23, 59, 59, 999999),
        None,
    ]
    assert [r[0] for r in rows] == forced.column("NTZ").to_pylist()
    # out of range but no sub-microsecond digits: the connector falls back to microseconds by itself
    assert whole_us.schema.field("NTZ").type == pa.timestamp("us")
    assert whole_us.column("NTZ").to_pylist() == [dt.datetime(1600, 1, 1, 0, 0, 0, 123456), None]


def test_ltz(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        table, _ = arrow(cur, "select ltz from ts order by k")
        rows = cur.execute("select ltz from ts order by k").fetchall()
    assert table.schema.field("LTZ").type == pa.timestamp("ns", tz=TZ_UTC)  # the session TIMEZONE
    assert table.column("LTZ")[0].value == 1704132000987654321  # 2024-01-01 18:00:00.987654321 UTC
    assert rows[0][0] == dt.datetime(2024, 1, 1, 18, 0, 0, 987654, tzinfo=dt.UTC)
    assert rows[0][0].utcoffset() == dt.timedelta(0)  # LTZ renders in the session time zone
    assert rows[2][0] is None


# --- 3. TIMESTAMP_TZ ----------------------------------------------------------------------------


def test_tz_keeps_offsets_and_nanoseconds(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        cur.execute("select tz from ts order by k")
        rows = cur.fetchall()
        table, _ = arrow(cur, "select tz from ts order by k")
    first, second, third = (r[0] for r in rows)
    assert first.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert (first.hour, first.minute, first.microsecond) == (10, 0, 123456)
    assert first == dt.datetime(2024, 1, 1, 4, 30, 0, 123456, tzinfo=dt.UTC)
    assert second.utcoffset() == dt.timedelta(hours=-8)
    assert second == dt.datetime(2024, 6, 1, 18, 0, tzinfo=dt.UTC)
    assert third is None
    # Arrow has one time zone per column: the connector gives UTC instants in the session zone
    assert table.schema.field("TZ").type == pa.timestamp("ns", tz=TZ_UTC)
    assert table.column("TZ")[0].value == 1704083400123456789
    assert table.column("TZ").null_count == 1


def test_bound_timestamps_keep_offset_and_nanoseconds(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        cur.execute("create or replace table bound (k int, tz timestamp_tz, ntz timestamp_ntz)")
        at = dt.datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))
        cur.execute(
            "insert into bound values (?, ?, ?)",
            (1, ("TIMESTAMP_TZ", at), ("TIMESTAMP_NTZ", dt.datetime(2025, 3, 4, 5, 6, 7, 891011))),
        )
        rows = cur.execute("select tz, ntz from bound").fetchall()
    assert rows[0][0].utcoffset() == dt.timedelta(hours=-3, minutes=-30)
    assert rows[0][0] == at
    assert rows[0][1] == dt.datetime(2025, 3, 4, 5, 6, 7, 891011)


# --- NULLs --------------------------------------------------------------------------------------


def test_nulls_of_every_type(faithful):
    with connect(faithful) as conn:
        cur = conn.cursor()
        sql = "select n, w, f, i, ntz, tz, ltz from numbers join ts using (k) where k = 3"
        cur.execute(sql)
        assert cur.fetchall() == [(None,) * 7]
        table, _ = arrow(cur, sql)
    assert table.num_rows == 1
    assert all(c.null_count == 1 for c in table.columns)


# --- 4. several chunks / batches ----------------------------------------------------------------


def test_large_result_arrives_in_several_chunks(faithful):
    before = faithful.stats()["counters"]
    with connect(faithful) as conn:
        cur = conn.cursor()
        table, tables = arrow(
            cur,
            "select seq8() as id, (seq8() * 1.25)::number(12,2) as amount from table(generator(rowcount => 61000))",
        )
    after = faithful.stats()["counters"]
    assert [t.num_rows for t in tables] == [1000, 20000, 20000, 20000]
    assert sorted(table.column("ID").to_pylist()) == list(range(61000))
    # each downloaded chunk is an IPC stream of several record batches
    assert [len(t.to_batches()) for t in tables] == [1, 4, 4, 4]
    assert after.get("chunks_served", 0) - before.get("chunks_served", 0) == 3
    assert after.get("chunks_refused", 0) == 0
    # the integer width is chosen per chunk from its values, so chunk types differ (int16, then int32) ...
    assert {str(t.schema.field("ID").type) for t in tables} == {"int16", "int32"}
    # ... and the plain concatenation that fetch_arrow_all uses refuses them
    with pytest.raises(pa.ArrowInvalid):
        pa.concat_tables(tables)
    assert table.schema.field("AMOUNT").type == pa.float64()


# --- 5. delays, the client's timeout, "query in progress" ---------------------------------------


def test_delayed_query_completes_when_the_timeout_allows(faithful):
    before = faithful.stats()["counters"]
    with connect(faithful, network_timeout=30) as conn:
        started = time.monotonic()
        rows = conn.cursor().execute("/* standin:delay=3 */ select 42").fetchall()
        elapsed = time.monotonic() - started
    assert rows == [(42,)]
    assert elapsed >= 3
    after = faithful.stats()["counters"]
    assert after.get("in_progress_answers", 0) > before.get("in_progress_answers", 0)  # progress_after=2


def test_execute_timeout_cancels_the_query(faithful):
    before = faithful.stats()["counters"]
    with connect(faithful, network_timeout=60) as conn:
        started = time.monotonic()
        with pytest.raises(ProgrammingError) as raised:
            conn.cursor().execute("/* standin:delay=30 */ select 1", timeout=2)
        elapsed = time.monotonic() - started
    assert raised.value.errno == 604
    assert "SQL execution was cancelled by the client due to a timeout" in raised.value.msg
    assert elapsed < 10
    after = faithful.stats()["counters"]
    assert after["abort_requests"] > before.get("abort_requests", 0)
    assert after["cancelled"] > before.get("cancelled", 0)


def test_network_timeout_is_the_default_query_timeout(faithful):
    with connect(faithful, network_timeout=2) as conn:
        with pytest.raises(ProgrammingError) as raised:
            conn.cursor().execute("/* standin:delay=30 */ select 1")
        assert raised.value.errno == 604
        # execute(timeout=...) replaces network_timeout for that query
        assert conn.cursor().execute("/* standin:delay=4 */ select 2", timeout=15).fetchall() == [(2,)]


def test_query_in_progress_keeps_each_request_below_the_socket_timeout(faithful):
    before = faithful.stats()["counters"]
    with connect(faithful, socket_timeout=3) as conn:
        rows = conn.cursor().execute("/* standin:delay=7 */ select 3").fetchall()
    after = faithful.stats()["counters"]
    assert rows == [(3,)]
    assert after["in_progress_answers"] - before.get("in_progress_answers", 0) >= 3
    assert after.get("retries_attached", 0) == before.get("retries_attached", 0)  # no socket timeout was hit


# --- what the connector sends, and the switch ---------------------------------------------------


def test_login_session_parameters(faithful):
    with connect(
        faithful,
        timezone="America/New_York",
        autocommit=True,
        client_session_keep_alive=False,
        network_timeout=17,
        socket_timeout=23,
    ):
        pass
    login = faithful.stats()["logins"][-1]
    assert login["session_parameters"] == {
        "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False,
        "AUTOCOMMIT": True,
        "TIMEZONE": "America/New_York",
        "CLIENT_SESSION_KEEP_ALIVE": False,
        "CLIENT_PREFETCH_THREADS": 4,
    }
    assert (login["network_timeout"], login["socket_timeout"]) == (17, 23)


def test_force_microsecond_precision_exists():
    assert "force_microsecond_precision" in inspect.signature(SnowflakeCursor.fetch_arrow_batches).parameters


def test_legacy_mode_is_unchanged(legacy):
    with connect(legacy, database=None, schema=None) as conn:
        cur = conn.cursor()
        cur.execute("create database if not exists L")
        cur.execute("create schema if not exists L.S")
        cur.execute("use schema L.S")
        cur.execute("create or replace table t (n number(18,4), ts timestamp_ntz)")
        cur.execute(
            "insert into t values (12345678901234.5678, '2024-01-01 12:34:56.123456789'::timestamp_ntz), (null, null)"
        )
        table, _ = arrow(cur, "select n, ts from t")
        assert table.schema.field("N").type == pa.decimal128(18, 4)  # fakesnow sends decimal128
        assert table.column("TS").to_pylist() == [dt.datetime(2024, 1, 1, 12, 34, 56, 123456), None]
        _, tables = arrow(cur, "select seq8() as id from table(generator(rowcount => 61000))")
        assert len(tables) == 1
