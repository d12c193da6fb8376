"""Publish mode: readers never see a half-loaded or empty table; the swap keeps views, indexes,
grants and comments (by renaming the shadow where nothing depends on the target, else by replacing
the rows); a guard refuses to replace a table with far fewer rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from cm_datacopy_tests.helpers import admin_conninfo, cli, cli_popen, pg_rows, sf_execute, write_config
from cm_datacopy_tests.test_copy_engine import _kill_inside_a_chunk_transaction


def _events(snowflake_server, sf_db, rows: int, label: str) -> None:
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"""CREATE OR REPLACE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID,
            '{label} ' || seq8() || ' ' || REPEAT('x', 200) AS BODY FROM TABLE(GENERATOR(ROWCOUNT => {rows}))""",
    )


def _config(config_path, snowflake_server, sf_db, pg_db, **table):
    write_config(
        config_path,
        snowflake_server,
        sf_db,
        pg_db,
        [{"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 2000, **table}],
    )


@pytest.fixture
def reader(pg_db) -> Iterator[str]:
    """A role given rights on the target by the test: grants must survive a publish."""
    name = f"cmdc_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**admin_conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(**pg_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with psycopg.connect(**admin_conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _snapshot(pg_db) -> list[tuple]:
    return pg_rows(pg_db, "SELECT count(*), md5(string_agg(body, ',' ORDER BY id)) FROM copy.events")


def test_killed_publish_run_leaves_the_old_table_then_resume_swaps(snowflake_server, sf_db, pg_db, config_path, reader):
    _events(snowflake_server, sf_db, 20_000, "old")
    _config(config_path, snowflake_server, sf_db, pg_db)
    assert cli(config_path, "run", "analytics").returncode == 0
    with psycopg.connect(**pg_db) as conn:
        conn.execute("CREATE VIEW copy.recent AS SELECT id, body FROM copy.events WHERE id >= 19000")
        conn.execute("CREATE INDEX events_body ON copy.events (body)")
        conn.execute("COMMENT ON TABLE copy.events IS 'copied from Snowflake'")
        conn.execute(sql.SQL("GRANT SELECT ON copy.events TO {}").format(sql.Identifier(reader)))
    old = _snapshot(pg_db)
    assert old[0][0] == 20_000

    _events(snowflake_server, sf_db, 30_000, "new")
    proc = cli_popen(config_path, "run", "analytics")
    _kill_inside_a_chunk_transaction(proc, pg_db)
    assert _snapshot(pg_db) == old, "readers see the old table, intact, while the new one loads"
    assert pg_rows(pg_db, "SELECT count(*) FROM copy.recent") == [(1000,)]

    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "published copy.events: 30,000 rows replaced 20,000 (rows replaced in the target (renaming is not "
        "safe: rule _RETURN on view copy.recent depends on it))" in " ".join(result.stdout.split())
    )
    assert pg_rows(
        pg_db,
        "SELECT publish_method FROM migration_status.migration_table_status "
        "WHERE published_at IS NOT NULL ORDER BY published_at DESC LIMIT 1",
    ) == [("rows: rule _RETURN on view copy.recent depends on it",)], "the ledger says which way the swap went"
    new = _snapshot(pg_db)
    assert new[0][0] == 30_000 and new != old
    assert pg_rows(pg_db, "SELECT count(*), min(body) LIKE 'new %' FROM copy.recent") == [(11_000, True)]
    assert pg_rows(pg_db, "SELECT count(*) FROM pg_indexes WHERE indexname = 'events_body'") == [(1,)]
    assert pg_rows(pg_db, "SELECT obj_description('copy.events'::regclass)") == [("copied from Snowflake",)]
    assert pg_rows(pg_db, "SELECT has_table_privilege(%s, 'copy.events', 'SELECT')", (reader,)) == [(True,)]
    assert pg_rows(
        pg_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'copy' AND tablename LIKE '%%__cmdc_%%'"
    ) == [(0,)], "the shadow is gone after the swap"


def test_guard_refuses_to_replace_a_table_with_far_fewer_rows(snowflake_server, sf_db, pg_db, config_path):
    _events(snowflake_server, sf_db, 5_000, "full")
    _config(config_path, snowflake_server, sf_db, pg_db)
    assert cli(config_path, "run", "analytics").returncode == 0
    before = _snapshot(pg_db)

    _events(snowflake_server, sf_db, 1_000, "shrunk")
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 1
    assert "refusing to publish copy.events: it would replace 5000 rows with 1000 (below publish_min_fraction 0.5)" in (
        result.stdout
    )
    assert _snapshot(pg_db) == before
    status = cli(config_path, "status", "analytics")
    assert "failed" in status.stdout

    assert "lower publish_min_fraction for this table and run again" in result.stdout
    assert "--no-resume" not in result.stdout, "a reload would be refused the same way: never advise it"

    # An empty source never empties the target, whatever the fraction.
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "DELETE FROM EVENTS")
    _config(config_path, snowflake_server, sf_db, pg_db, publish_min_fraction=0.0)
    empty = cli(config_path, "run", "analytics", "--no-resume")
    assert empty.returncode == 1 and "with 0 (below publish_min_fraction 0)" in empty.stdout
    assert _snapshot(pg_db) == before, "an empty source never empties the target in publish mode"

    # The advice works: with the shrunk source back and the fraction lowered on purpose, the run
    # resumes and only publishes (the fraction does not restart the copy).
    _events(snowflake_server, sf_db, 1_000, "shrunk")
    _config(config_path, snowflake_server, sf_db, pg_db)
    assert cli(config_path, "run", "analytics", "--no-resume").returncode == 1  # 1000 < 0.5 × 5000 again
    _config(config_path, snowflake_server, sf_db, pg_db, publish_min_fraction=0.1)
    resumed = cli(config_path, "run", "analytics")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stdout and "published copy.events: 1,000 rows" in resumed.stdout
    assert _snapshot(pg_db)[0][0] == 1_000


def test_a_table_without_key_is_replaced_atomically_in_place(snowflake_server, sf_db, pg_db, config_path):
    _events(snowflake_server, sf_db, 3_000, "one")
    _config(config_path, snowflake_server, sf_db, pg_db, chunk_key=None, mode="in_place")
    assert cli(config_path, "run", "analytics").returncode == 0
    assert pg_rows(pg_db, "SELECT count(*) FROM migration_status.migration_chunk_status") == [(1,)]
    _events(snowflake_server, sf_db, 3_500, "two")
    assert cli(config_path, "run", "analytics").returncode == 0
    assert pg_rows(pg_db, "SELECT count(*), count(*) FILTER (WHERE body LIKE 'two %') FROM copy.events") == [
        (3_500, 3_500)
    ]


def _oid(pg_db) -> int:
    return pg_rows(pg_db, "SELECT 'copy.events'::regclass::oid")[0][0]


def test_a_plain_target_is_published_by_rename_and_keeps_what_it_had(
    snowflake_server, sf_db, pg_db, config_path, reader
):
    _events(snowflake_server, sf_db, 6_000, "old")
    _config(config_path, snowflake_server, sf_db, pg_db)
    assert cli(config_path, "run", "analytics").returncode == 0
    with psycopg.connect(**pg_db) as conn:
        conn.execute("ALTER TABLE copy.events ADD CONSTRAINT events_id_key UNIQUE (id)")
        conn.execute("ALTER TABLE copy.events ADD CONSTRAINT body_not_empty CHECK (body <> '')")
        conn.execute("CREATE INDEX events_body ON copy.events (lower(body)) WHERE id > 10")
        conn.execute("COMMENT ON TABLE copy.events IS 'copied from Snowflake'")
        conn.execute("COMMENT ON COLUMN copy.events.body IS 'the text'")
        conn.execute("COMMENT ON INDEX copy.events_body IS 'for search'")
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON copy.events TO {}").format(sql.Identifier(reader)))
    shape = """SELECT (SELECT array_agg(pg_get_indexdef(indexrelid) ORDER BY indexrelid::regclass::text)
                         FROM pg_index WHERE indrelid = 'copy.events'::regclass),
                      (SELECT array_agg(conname || ' ' || pg_get_constraintdef(oid) ORDER BY conname)
                         FROM pg_constraint WHERE conrelid = 'copy.events'::regclass),
                      obj_description('copy.events'::regclass), col_description('copy.events'::regclass, 2),
                      obj_description('copy.events_body'::regclass),
                      (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(relacl) a)
               FROM pg_class WHERE oid = 'copy.events'::regclass"""
    before, old_oid = pg_rows(pg_db, shape), _oid(pg_db)

    _events(snowflake_server, sf_db, 7_000, "new")
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "published copy.events: 7,000 rows replaced 6,000 (the shadow renamed over the target)" in result.stdout
    assert _oid(pg_db) != old_oid, "a new table took the name: no row was written twice"
    assert pg_rows(pg_db, shape) == before, "indexes, constraints, comments and grants are the target's"
    assert pg_rows(pg_db, "SELECT count(*), count(*) FILTER (WHERE body LIKE 'new %') FROM copy.events") == [
        (7_000, 7_000)
    ]
    assert pg_rows(pg_db, "SELECT has_table_privilege(%s, 'copy.events', 'UPDATE')", (reader,)) == [(True,)]
    assert pg_rows(pg_db, "SELECT count(*) FROM pg_class WHERE relname LIKE '%%cmdc%%'") == [(0,)], (
        "neither the shadow nor its chunk-key index is left"
    )
    assert pg_rows(
        pg_db, "SELECT publish_method FROM migration_status.migration_table_status WHERE replaced_rows = 6000"
    ) == [("rename",)]

    # A dependent view appears: the next publish keeps the table (and the view) and replaces its rows.
    with psycopg.connect(**pg_db) as conn:
        conn.execute("CREATE VIEW copy.recent AS SELECT id, body FROM copy.events WHERE id >= 5000")
    _events(snowflake_server, sf_db, 8_000, "newer")
    oid = _oid(pg_db)
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule _RETURN on view copy.recent depends on it" in " ".join(result.stdout.split())
    assert _oid(pg_db) == oid
    assert pg_rows(pg_db, "SELECT count(*), min(body) LIKE 'newer %' FROM copy.recent") == [(3_000, True)]
    assert pg_rows(pg_db, shape) == before


def test_a_busy_reader_turns_the_rename_into_a_row_swap_and_keeps_its_snapshot(
    snowflake_server, sf_db, pg_db, config_path
):
    _events(snowflake_server, sf_db, 4_000, "old")
    table = {"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 2000}
    write_config(config_path, snowflake_server, sf_db, pg_db, [table], lock_timeout_seconds=1)
    assert cli(config_path, "run", "analytics").returncode == 0
    old, oid = _snapshot(pg_db), _oid(pg_db)

    _events(snowflake_server, sf_db, 5_000, "new")
    with psycopg.connect(**pg_db) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM copy.events").fetchone() == (4_000,)  # holds ACCESS SHARE
        result = cli(config_path, "run", "analytics")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "renaming is not safe: readers kept the table busy for 1 s" in " ".join(result.stdout.split())
        assert reader.execute("SELECT count(*) FROM copy.events").fetchone() == (4_000,), "its snapshot holds"
    assert _oid(pg_db) == oid, "the same table, its rows replaced"
    new = _snapshot(pg_db)
    assert new[0][0] == 5_000 and new != old
