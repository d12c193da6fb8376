"""Chunk boundaries (``snowflake/boundaries.py``) against the Snowflake stand-in.

Every case checks: the boundaries are sorted, distinct, of the key's Python type and round-trip
through the ledger's text encoding; the chunks cover every row exactly once (in Python from all
keys, and in SQL with the product's own range predicates); each chunk's predicted row count is
exact; no chunk exceeds chunk_size unless it is one key value (or the NULLs), which the plan
reports; two neighbouring chunks always hold more than chunk_size rows.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import itertools
import math
from decimal import Decimal
from typing import Any

import pytest

from cm_datacopy.ranges import Chunk, decode_bound, encode_bound, plan_chunks
from cm_datacopy.snowflake import boundaries as B
from cm_datacopy.snowflake.scan import Scan, range_where
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy_tests.helpers import new_sf_database, sf_session

PY_TYPES = {
    "int": int,
    "decimal": Decimal,
    "float": float,
    "date": dt.date,
    "timestamp": dt.datetime,
    "timestamptz": dt.datetime,
}


@pytest.fixture(scope="module")
def conn(snowflake_server) -> Any:
    db = new_sf_database(snowflake_server, "B")
    session = sf_session(snowflake_server, db)
    raw = session.conn
    session.test_db = db  # type: ignore[attr-defined]
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):
            raw.close()


def make_table(conn: Any, name: str, select_sql: str) -> str:
    ref = ".".join(sf_ident(p) for p in (conn.test_db, "PUBLIC", name))
    conn.execute(f"CREATE OR REPLACE TABLE {ref} AS {select_sql}")
    return ref


def _ord(v: Any) -> Any:
    """Snowflake's order for the Python values: NaN above everything."""
    if isinstance(v, float) and math.isnan(v):
        return (1, 0.0)
    if isinstance(v, (int, float, Decimal)):
        return (0, v)
    return v


def check(
    conn: Any,
    ref: str,
    column: str,
    kind: str,
    chunk_size: int,
    *,
    scan: Scan | None = None,
    where: str = "TRUE",
    sql_check: bool = True,
) -> B.Plan:
    key_sql = sf_ident(column)
    scan = scan or Scan(ref)
    p = B.plan(conn, scan, column, kind, chunk_size)
    assert p.boundaries == B.chunk_boundaries(conn, scan, column, kind, chunk_size)
    bounds = p.boundaries
    # sorted, distinct, typed, round-trip through the ledger's text form
    assert all(_ord(a) < _ord(b) for a, b in itertools.pairwise(bounds)), bounds[:5]
    for b in bounds:
        assert isinstance(b, PY_TYPES[kind]), (b, kind)
        back = decode_bound(kind, encode_bound(kind, b))  # type: ignore[arg-type]
        assert back == b or (isinstance(b, float) and math.isnan(b) and math.isnan(back))
    # every row in exactly one chunk (Python, from all keys)
    keys = [r[0] for r in conn.execute(f"SELECT {key_sql} FROM {ref} WHERE {where}").fetchall()]
    assert p.rows == len(keys)
    counts = [0] * (len(bounds) + 1)
    border = [_ord(b) for b in bounds]
    for k in keys:
        counts[0 if k is None else bisect.bisect_right(border, _ord(k))] += 1
    assert counts == p.chunk_rows, (counts[:10], p.chunk_rows[:10])
    assert sum(p.chunk_rows) == len(keys)
    # the same in Snowflake, with the product's chunk predicates
    if sql_check:
        chunks = plan_chunks("t", column, kind, bounds)  # type: ignore[arg-type]
        sql_counts = []
        for ch in chunks:
            cond, params = range_where(ch)
            sql_counts.append(
                conn.execute(f"SELECT COUNT(*) FROM {ref} WHERE ({where}) AND ({cond})", params).fetchone()[0]
            )
        assert sql_counts == p.chunk_rows
    # sizes: never above chunk_size unless reported as unsplittable; neighbours hold > chunk_size
    assert sorted(n for n in p.chunk_rows if n > chunk_size) == sorted(n for _, _, n in p.oversize)
    for lo, hi, n in p.oversize:
        assert n > chunk_size
        if lo is not None and not (isinstance(lo, float) and math.isinf(lo)):
            assert lo == hi or kind == "float", (lo, hi)  # one key value (or inf/NaN together)
    for a, b in zip(p.chunk_rows, p.chunk_rows[1:], strict=False):
        assert a + b > chunk_size
    assert len(p.chunk_rows) <= 2 * len(keys) // chunk_size + 1 + 2 * len(p.oversize)
    return p


def test_dense_int(conn: Any) -> None:
    ref = make_table(
        conn, "DENSE", "SELECT CAST(seq8() AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 20000))"
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert p.chunk_rows == [1000] * 20 and p.queries == 2 and not p.oversize


def test_negative_keys_and_some_nulls(conn: Any) -> None:
    ref = make_table(
        conn,
        "NEG",
        "SELECT CASE WHEN seq8() % 29 = 0 THEN NULL ELSE CAST(seq8() AS NUMBER(38,0)) - 15000 END AS ID "
        "FROM TABLE(GENERATOR(ROWCOUNT => 20000))",
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert p.null_rows == 690 and p.boundaries[0] < 0 and not p.oversize


def test_nulls_above_chunk_size_are_reported(conn: Any) -> None:
    ref = make_table(
        conn,
        "MANYNULL",
        "SELECT CASE WHEN seq8() < 2500 THEN NULL ELSE CAST(seq8() AS NUMBER(38,0)) END AS ID "
        "FROM TABLE(GENERATOR(ROWCOUNT => 10000))",
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert p.chunk_rows[0] == 2500 and p.boundaries[0] == 2500
    assert p.oversize == [(None, None, 2500)]


def test_all_null_and_empty(conn: Any) -> None:
    ref = make_table(conn, "ALLNULL", "SELECT CAST(NULL AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 3000))")
    p = check(conn, ref, "ID", "int", 1000)
    assert p.boundaries == [] and p.oversize == [(None, None, 3000)] and p.queries == 1
    ref = make_table(
        conn, "EMPTY", "SELECT CAST(seq8() AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10)) WHERE FALSE"
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert p.boundaries == [] and p.chunk_rows == [0] and p.queries == 1


def test_small_table_is_one_chunk(conn: Any) -> None:
    ref = make_table(conn, "SMALL", "SELECT CAST(seq8() AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 1000))")
    p = check(conn, ref, "ID", "int", 1000)
    assert p.boundaries == [] and p.queries == 1


def test_single_distinct_value(conn: Any) -> None:
    ref = make_table(conn, "ONE", "SELECT CAST(42 AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 5000))")
    p = check(conn, ref, "ID", "int", 1000)
    assert p.boundaries == [] and p.oversize == [(42, 42, 5000)]
    ref = make_table(
        conn,
        "ONENULL",
        "SELECT CASE WHEN seq8() % 10 = 0 THEN NULL ELSE CAST(42 AS NUMBER(38,0)) END AS ID "
        "FROM TABLE(GENERATOR(ROWCOUNT => 5000))",
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert p.boundaries == [42] and p.chunk_rows == [500, 4500]


def test_huge_sparse_range(conn: Any) -> None:
    # ids 1, 2, ... 9999 and a few far away: 10^12, 10^15, 10^15 + 1, and 4 * 10^18 (near int64's end)
    ref = make_table(
        conn,
        "SPARSE",
        "SELECT CAST(seq8() + 1 AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 9999)) "
        "UNION ALL SELECT CAST(1000000000000 AS NUMBER(38,0)) UNION ALL SELECT CAST(1000000000000000 AS NUMBER(38,0)) "
        "UNION ALL SELECT CAST(1000000000000001 AS NUMBER(38,0)) "
        "UNION ALL SELECT CAST(4000000000000000000 AS NUMBER(38,0))",
    )
    p = check(conn, ref, "ID", "int", 500)
    assert max(p.chunk_rows) <= 500 and len(p.chunk_rows) <= 25
    # every 1000th row far away (up to 10^15): sparse outliers spread over the range
    ref = make_table(
        conn,
        "SPARSE2",
        "SELECT CAST(CASE WHEN seq8() % 1000 = 0 THEN seq8() * 1000000000 + 7 ELSE seq8() END AS NUMBER(38,0)) AS ID "
        "FROM TABLE(GENERATOR(ROWCOUNT => 50000))",
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert max(p.chunk_rows) <= 1000


def test_heavy_skew(conn: Any) -> None:
    # density ~ k^(-3/4) over [0, 10^9], and one value holding 1/7 of the rows
    ref = make_table(
        conn,
        "SKEW",
        "SELECT CAST(CASE WHEN seq8() % 7 = 3 THEN 500000000 ELSE FLOOR(POWER(seq8() / 50000, 4) * 1e9) END "
        "AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 50000))",
    )
    p = check(conn, ref, "ID", "int", 1000)
    assert p.oversize == [(500000000, 500000000, 7143)]
    assert 500000000 in p.boundaries
    # heavy values near the bottom (FLOOR makes many rows share the smallest keys)
    zeros = [lo for lo, hi, n in p.oversize if lo == 0]
    assert not zeros or zeros == [0]


def test_decimal(conn: Any) -> None:
    ref = make_table(
        conn,
        "DEC",
        "SELECT CASE WHEN seq8() % 29 = 0 THEN NULL ELSE CAST((seq8() - 10000) / 7 AS NUMBER(18,4)) END AS AMOUNT "
        "FROM TABLE(GENERATOR(ROWCOUNT => 20000)) UNION ALL SELECT CAST(99999999999999.9999 AS NUMBER(18,4))",
    )
    # Decimal bounds are bound as text cast to NUMBER (the stand-in refuses a bound Decimal): the SQL
    # check runs the product's range predicates on them.
    p = check(conn, ref, "AMOUNT", "decimal", 1000)
    assert all(isinstance(b, Decimal) for b in p.boundaries) and max(p.chunk_rows) <= 1000


def test_float_with_infinities_nan_and_negative_zero(conn: Any) -> None:
    ref = make_table(
        conn,
        "FLT",
        "SELECT CASE WHEN seq8() % 29 = 0 THEN NULL ELSE (CAST(seq8() AS FLOAT) - 10000) / 3 END AS X "
        "FROM TABLE(GENERATOR(ROWCOUNT => 20000)) "
        "UNION ALL SELECT CAST('-inf' AS FLOAT) UNION ALL SELECT CAST('inf' AS FLOAT) "
        "UNION ALL SELECT CAST('NaN' AS FLOAT) UNION ALL SELECT CAST('-0.0' AS FLOAT) "
        "UNION ALL SELECT CAST(-1e300 AS FLOAT) UNION ALL SELECT CAST(1.7e308 AS FLOAT)",
    )
    p = check(conn, ref, "X", "float", 1000)
    assert max(p.chunk_rows) <= 1000
    # 1500 NaN and inf rows: one chunk above everything finite, reported
    ref = make_table(
        conn,
        "FLT2",
        "SELECT CASE WHEN seq8() < 1500 THEN CAST('NaN' AS FLOAT) ELSE CAST(seq8() AS FLOAT) END AS X "
        "FROM TABLE(GENERATOR(ROWCOUNT => 6000)) UNION ALL SELECT CAST('inf' AS FLOAT)",
    )
    p = check(conn, ref, "X", "float", 1000)
    assert p.boundaries[-1] == math.inf and p.chunk_rows[-1] == 1501 and len(p.oversize) == 1


def test_date(conn: Any) -> None:
    ref = make_table(
        conn,
        "DT",
        "SELECT CASE WHEN seq8() % 41 = 0 THEN NULL "
        "ELSE DATEADD(day, FLOOR(seq8() / 3), CAST('1960-01-01' AS DATE)) END "
        "AS D FROM TABLE(GENERATOR(ROWCOUNT => 30000)) UNION ALL SELECT CAST('0001-01-01' AS DATE) "
        "UNION ALL SELECT CAST('9999-12-31' AS DATE)",
    )
    p = check(conn, ref, "D", "date", 1000)
    assert all(type(b) is dt.date for b in p.boundaries) and max(p.chunk_rows) <= 1000


def test_timestamp_ntz_microsecond_clusters(conn: Any) -> None:
    # 20000 rows within 20 ms (one per microsecond), 5000 over a day, outliers in 1900 and at the last microsecond
    ref = make_table(
        conn,
        "TS",
        "SELECT DATEADD(microsecond, seq8(), CAST('2024-02-29 12:00:00' AS TIMESTAMP_NTZ)) AS TS "
        "FROM TABLE(GENERATOR(ROWCOUNT => 20000)) "
        "UNION ALL SELECT DATEADD(second, seq8() * 17, CAST('2024-02-29 00:00:00' AS TIMESTAMP_NTZ)) "
        "FROM TABLE(GENERATOR(ROWCOUNT => 5000)) "
        "UNION ALL SELECT CAST('1900-01-01 00:00:00' AS TIMESTAMP_NTZ) "
        "UNION ALL SELECT CAST('9999-12-31 23:59:59.999999' AS TIMESTAMP_NTZ) "
        "UNION ALL SELECT CAST(NULL AS TIMESTAMP_NTZ)",
    )
    p = check(conn, ref, "TS", "timestamp", 1000)
    assert all(b.tzinfo is None for b in p.boundaries) and max(p.chunk_rows) <= 1000
    assert p.null_rows == 1


def test_timestamp_tz_mixed_offsets(conn: Any) -> None:
    minute = "DATEADD(minute, seq8(), CAST('2021-06-01 00:00:00' AS TIMESTAMP_NTZ))"
    ref = make_table(
        conn,
        "TZ",
        "SELECT CASE WHEN seq8() % 3 = 0 THEN "
        f"CAST(TO_VARCHAR({minute}) || '+05:30' AS TIMESTAMP_TZ) "
        f"ELSE CAST(TO_VARCHAR({minute}) || '-08:00' AS TIMESTAMP_TZ) "
        "END AS T FROM TABLE(GENERATOR(ROWCOUNT => 20000)) UNION ALL SELECT CAST(NULL AS TIMESTAMP_TZ)",
    )
    p = check(conn, ref, "T", "timestamptz", 1000)
    assert all(b.tzinfo is not None for b in p.boundaries) and max(p.chunk_rows) <= 1000


def test_hostile_identifier_and_time_travel_parameter_first(conn: Any) -> None:
    name = 'we"ird %s ? key'
    ref = make_table(
        conn,
        'T "q" %s',
        f"SELECT CAST(seq8() AS NUMBER(38,0)) AS {sf_ident(name)} FROM TABLE(GENERATOR(ROWCOUNT => 10000))",
    )
    check(conn, ref, name, "int", 700)
    # the stand-in has no AT(...): a scan with a bound range of its own proves the parameter order
    # (the scan's parameters first) in every query
    part = Scan(ref, None, Chunk("t", 1, name, "int", "4000", None))
    p = check(conn, ref, name, "int", 700, scan=part, where=f"{sf_ident(name)} >= 4000", sql_check=False)
    assert p.rows == 6000 and p.boundaries[0] > 4000


def test_chunk_size_one(conn: Any) -> None:
    ref = make_table(
        conn,
        "TINY",
        "SELECT CAST(FLOOR(seq8() / 2) AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 200)) "
        "UNION ALL SELECT CAST(NULL AS NUMBER(38,0))",
    )
    p = check(conn, ref, "ID", "int", 1)
    assert p.boundaries == list(range(100)) and len(p.oversize) == 100


def test_exact_fallback_when_the_image_loses_resolution(conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A deliberately coarse image (thousands collapse into one x) makes cells stall; after two stalls
    # their distinct values are counted exactly (GROUP BY the key).
    original = B._Kind.image

    def coarse(self: B._Kind, origin: Any) -> tuple[str, list[Any]]:
        sql, params = original(self, origin)
        return f"FLOOR({sql} / 100000)", params

    monkeypatch.setattr(B._Kind, "image", coarse)
    ref = make_table(
        conn, "COARSE", "SELECT CAST(FLOOR(seq8() / 3) AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 6000))"
    )
    p = check(conn, ref, "ID", "int", 500)
    assert max(p.chunk_rows) <= 500 and p.rounds >= 3


def test_table_changing_while_planning_still_plans(conn: Any) -> None:
    # Without Time Travel a live table may change between the planner's queries: rows appear after
    # the statistics query. The plan still comes back (the ranges cover every row); sizes are estimates.
    ref = make_table(conn, "LIVE", "SELECT CAST(seq8() AS NUMBER(38,0)) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 10000))")

    class Inserting(Session):
        calls = 0

        def execute(self, statement: str, params: Any = (), *, timeout: int | None = None) -> Any:
            self.calls += 1
            if self.calls == 2:
                super().execute(
                    f"INSERT INTO {ref} SELECT CAST(seq8() + 100 AS NUMBER(38,0)) "
                    "FROM TABLE(GENERATOR(ROWCOUNT => 3000))"
                )
            return super().execute(statement, params, timeout=timeout)

    bounds = B.chunk_boundaries(Inserting(conn.conn, conn.cfg), Scan(ref), "ID", "int", 1000)
    assert bounds == sorted(set(bounds)) and len(bounds) >= 9
