"""The run-start self-test of the checksum's canonical text (``run/selftest.py``).

It runs in-process here, against the stand-in and the real PostgreSQL: on every type the copy
supports it must pass; with one type's expression broken it must refuse the run, naming that type
and both texts, before anything is written — for a new run and for a resumed one.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import psycopg
import pytest

from cm_datacopy import checksum
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run import resume, selftest
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.typeplan import ColumnPlan, map_type
from cm_datacopy_tests.helpers import load, pg_rows, sf_execute, write_config

# (Snowflake type as INFORMATION_SCHEMA reports it: data_type, precision, scale, char length)
EVERY_TYPE = [
    ("NUMBER", 4, 0, None),
    ("NUMBER", 18, 0, None),
    ("NUMBER", 38, 0, None),
    ("NUMBER", 18, 4, None),
    ("NUMBER", 38, 37, None),
    ("NUMBER", 5, 5, None),
    ("FLOAT", None, None, None),
    ("TEXT", None, None, 16_777_216),
    ("TEXT", None, None, 5),
    ("BINARY", None, None, None),
    ("BOOLEAN", None, None, None),
    ("DATE", None, None, None),
    ("TIME", None, None, None),
    ("TIMESTAMP_NTZ", None, None, None),
    ("TIMESTAMP_TZ", None, None, None),
    ("TIMESTAMP_LTZ", None, None, None),
    ("VARIANT", None, None, None),
    ("OBJECT", None, None, None),
    ("ARRAY", None, None, None),
]


def _columns() -> list[ColumnPlan]:
    out = []
    for i, (data_type, p, s, n) in enumerate(EVERY_TYPE):
        sf, pg, encoding = map_type(f"C{i}", data_type, p, s, n)
        out.append(ColumnPlan(f"C{i}", f"c{i}", sf, pg, True, encoding))
    return out


@pytest.fixture
def source(snowflake_server, sf_db, pg_db, config_path):
    """A source with one table of several types (its NUMBER(5,5) prints '.50000' on the stand-in)."""
    sf_execute(
        snowflake_server,
        sf_db,
        "CREATE TABLE PUBLIC.T (ID NUMBER(9,0), F NUMBER(5,5), TS TIMESTAMP_TZ, NAME VARCHAR)",
        "INSERT INTO PUBLIC.T VALUES (1, 0.5, '2024-01-01 10:00:00 +05:30'::TIMESTAMP_TZ, 'a'), (2, NULL, NULL, NULL)",
    )
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": "T", "target_schema": "copy"}])
    return load(config_path).sources["analytics"], pg_db


def _break(monkeypatch: pytest.MonkeyPatch, kind: str, **expressions: str) -> None:
    monkeypatch.setitem(checksum.CANONICAL, kind, replace(checksum.CANONICAL[kind], **expressions))


def _written(pg: dict) -> list[tuple[str]]:
    return pg_rows(
        pg, "SELECT nspname FROM pg_namespace WHERE nspname IN ('copy', 'migration_status') ORDER BY nspname"
    )


def test_every_supported_type_passes(snowflake_server, source):
    cfg, pg = source
    with sf_session.connect(cfg.snowflake) as sf, psycopg.connect(**pg) as conn:
        selftest.check(sf, conn, _columns(), Ledger())
        assert not conn.info.transaction_status  # idle: nothing left open, nothing written


def test_edge_values_are_what_the_brief_of_each_type_says():
    by_type = {c.snowflake_type: selftest.edge_values(c, "snowflake") for c in _columns()}
    assert "99999999999999.9999" in by_type["NUMBER(18,4)"] and "-99999999999999.9999" in by_type["NUMBER(18,4)"]
    assert "0.99999" in by_type["NUMBER(5,5)"] and "0.00001" in by_type["NUMBER(5,5)"]
    assert "9.9999999999999999999999999999999999999" in by_type["NUMBER(38,37)"]
    assert "99999999999999999999999999999999999999" in by_type["NUMBER(38,0)"]
    assert {"NaN", "inf", "-inf", "-0.0"} <= set(by_type["FLOAT"])
    assert any(v.endswith("+05:30") for v in by_type["TIMESTAMP_TZ"])
    assert any(v.endswith("-08:00") for v in by_type["TIMESTAMP_TZ"])
    assert any(len(v.rsplit(".", 1)[-1]) == 9 for v in by_type["TIMESTAMP_NTZ"])  # sub-microsecond digits
    assert "0001-01-01" in by_type["DATE"] and by_type["TIMESTAMP_NTZ"][0].startswith("0001-01-01")
    assert all(len(v) <= 5 for v in by_type["VARCHAR(5)"])
    # the stand-in holds NUMBER(38,0) in 64 bits
    stand_in = selftest.edge_values(next(c for c in _columns() if c.snowflake_type == "NUMBER(38,0)"), "standin")
    assert str(2**63 - 1) in stand_in


def test_a_broken_snowflake_expression_refuses_a_new_run_and_writes_nothing(source, monkeypatch):
    cfg, pg = source
    _break(monkeypatch, "decimal", snowflake="TO_VARCHAR({c}::NUMBER({p},{s}))")  # prints '.50000' on the stand-in
    with psycopg.connect(**pg) as conn, pytest.raises(selftest.SelfTestError) as refused:
        resume.start_or_resume(cfg, conn)
    message = str(refused.value)
    assert "NUMBER(5,5) (PostgreSQL numeric(5,5))" in message
    assert "value '0.99999': Snowflake writes 'v6:.99999', PostgreSQL writes 'v7:0.99999'" in message
    assert "TIMESTAMP_TZ" not in message and "VARCHAR" not in message  # only the broken type is named
    assert _written(pg) == []


def test_a_broken_postgres_expression_refuses_a_resumed_run(source, monkeypatch):
    cfg, pg = source
    with psycopg.connect(**pg) as conn:
        first = resume.start_or_resume(cfg, conn)
        conn.commit()
    count = pg_rows(pg, "SELECT resume_attempt_count FROM migration_status.migration_runs")
    # rounds to the millisecond instead of keeping the microseconds
    _break(
        monkeypatch,
        "timestamptz",
        postgres="(extract(epoch FROM date_trunc('milliseconds', {c})) * 1000000)::numeric(38,0)::text",
    )
    with psycopg.connect(**pg) as conn, pytest.raises(selftest.SelfTestError) as refused:
        resume.start_or_resume(cfg, conn)
    assert "TIMESTAMP_TZ (PostgreSQL timestamp with time zone)" in str(refused.value)
    assert "value '2024-01-01T10:00:00.123456789+05:30'" in str(refused.value)
    assert "'v16:1704083400123456'" in str(refused.value) and "'v16:1704083400123000'" in str(refused.value)
    assert pg_rows(pg, "SELECT run_id, resume_attempt_count FROM migration_status.migration_runs") == [
        (first.run_id, count[0][0])
    ]


def test_an_expression_snowflake_refuses_is_named(source, monkeypatch):
    cfg, pg = source
    _break(monkeypatch, "timestamptz", snowflake="NO_SUCH_FUNCTION({c})")
    with psycopg.connect(**pg) as conn, pytest.raises(selftest.SelfTestError) as refused:
        resume.start_or_resume(cfg, conn)
    assert "Snowflake cannot write or deliver TIMESTAMP_TZ (PostgreSQL timestamp with time zone)" in str(refused.value)
    assert "no_such_function" in str(refused.value).lower()
    assert _written(pg) == []


def test_a_value_the_binary_encoder_refuses_is_named(snowflake_server, source, monkeypatch):
    """Values go through the copy's encoder: decimals delivered as floats are refused, naming the type.

    A session without exact decimals delivers NUMBER(p,s>0) as float64, which the binary encoder never
    rounds into numeric; the self-test reports it before any row moves.
    """
    import snowflake.connector

    real_connect = snowflake.connector.connect

    def floats_for_decimals(**kwargs):
        kwargs.pop("arrow_number_to_decimal", None)  # NUMBER(p,s>0) then arrives as float64
        return real_connect(**kwargs)

    monkeypatch.setattr(snowflake.connector, "connect", floats_for_decimals)
    cfg, pg = source
    decimals = [c for c in _columns() if c.snowflake_type == "NUMBER(18,4)"]
    with (
        sf_session.connect(cfg.snowflake) as sf,
        psycopg.connect(**pg) as conn,
        pytest.raises(selftest.SelfTestError) as refused,
    ):
        selftest.check(sf, conn, decimals, Ledger())
        assert not conn.info.transaction_status
    message = str(refused.value)
    assert "NUMBER(18,4) (PostgreSQL numeric(18,4)), value '99999999999999.9999'" in message
    assert "cannot be copied (binary COPY)" in message
    assert "arrived as double, not an exact number" in message
    assert _written(pg) == []


def test_each_type_goes_through_the_encoder_the_copy_chooses(snowflake_server, source, caplog):
    """numeric has a binary wire form; citext has none, so the copy (and the self-test) send it as CSV."""
    cfg, pg = source
    columns = [
        ColumnPlan("C0", "c0", "NUMBER(18,4)", "numeric(18,4)", True),
        ColumnPlan("C1", "c1", "VARCHAR(16777216)", "citext", True),
    ]
    caplog.set_level(logging.DEBUG, logger="cm_datacopy.run.selftest")
    with sf_session.connect(cfg.snowflake) as sf, psycopg.connect(**pg) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.commit()
        selftest.check(sf, conn, columns, Ledger())
        assert not conn.info.transaction_status
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'cm_datacopy_selftest%'").fetchone() == (
            0,
        )
        # the scratch schema it needed went with the rolled-back transaction too
        assert conn.execute("SELECT to_regnamespace('migration_status')").fetchone() == (None,)
    assert "self-test of NUMBER(18,4) (PostgreSQL numeric(18,4)): COPY in binary format" in caplog.text
    assert "self-test of VARCHAR(16777216) (PostgreSQL citext): COPY in csv format" in caplog.text
    assert _written(pg) == []


def test_a_type_postgresql_lacks_is_named_without_a_value(snowflake_server, source):
    """A planned type the database does not have (citext without its extension) is the type's problem, not a value's."""
    cfg, pg = source
    columns = [ColumnPlan("C0", "c0", "VARCHAR(16777216)", "citext", True)]
    with (
        sf_session.connect(cfg.snowflake) as sf,
        psycopg.connect(**pg) as conn,
        pytest.raises(selftest.SelfTestError) as refused,
    ):
        selftest.check(sf, conn, columns, Ledger())
    message = str(refused.value)
    assert "VARCHAR(16777216) (PostgreSQL citext): the values Snowflake delivers cannot be copied (csv COPY)" in message
    assert 'type "citext" does not exist' in message
    assert _written(pg) == []


def test_wide_decimals_pass(snowflake_server, source):
    """Integer parts beyond 64 bits (the stand-in's NUMBER(38,0) is 64-bit) are written from text."""
    cfg, pg = source
    wide = [ColumnPlan(f"C{i}", f"c{i}", f"NUMBER(38,{s})", f"numeric(38,{s})", True) for i, s in enumerate((1, 6, 18))]
    with sf_session.connect(cfg.snowflake) as sf, psycopg.connect(**pg) as conn:
        selftest.check(sf, conn, wide, Ledger())
