"""The stand-in keeps fakesnow's translation of a query per SQL text: results must still follow the data.

A kept translation is only the DuckDB SQL of the text; it must not freeze a result, ignore the
session's database, bound values or session variables, or be kept for statements that change state.
"""

from __future__ import annotations

import contextlib

from cm_datacopy_tests.helpers import new_sf_database, sf_connect


def _reused(server) -> int:
    return server.stats()["counters"].get("translations_reused", 0)


def test_a_reused_translation_reads_the_data_as_it_is_now(snowflake_server, sf_db):
    with contextlib.closing(sf_connect(snowflake_server, sf_db)) as conn:
        cur = conn.cursor()
        cur.execute("USE SCHEMA PUBLIC")
        cur.execute("CREATE TABLE T (ID NUMBER(18,0), NAME VARCHAR)")
        cur.execute("INSERT INTO T VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        query = "SELECT COUNT(*), COALESCE(SUM(ID), 0) FROM T WHERE ID >= ?"
        before = _reused(snowflake_server)
        assert cur.execute(query, [2]).fetchone() == (2, 5)
        assert cur.execute(query, [1]).fetchone() == (3, 6)  # same text, other bound value
        cur.execute("INSERT INTO T VALUES (4, 'd')")
        assert cur.execute(query, [1]).fetchone() == (4, 10)  # same text, new rows
        cur.execute("DELETE FROM T WHERE ID = 4")
        assert cur.execute(query, [1]).fetchone() == (3, 6)
        assert _reused(snowflake_server) - before >= 3, "the translation was not reused"


def test_a_reused_translation_follows_the_sessions_database_and_variables(snowflake_server, sf_db):
    other = new_sf_database(snowflake_server)
    with contextlib.closing(sf_connect(snowflake_server, sf_db)) as conn:
        cur = conn.cursor()
        for database, rows in ((sf_db, 1), (other, 2)):
            cur.execute(f'USE DATABASE "{database}"')
            cur.execute("USE SCHEMA PUBLIC")
            cur.execute("CREATE TABLE U (ID NUMBER(18,0))")
            cur.execute("INSERT INTO U SELECT seq8() FROM TABLE(GENERATOR(ROWCOUNT => " + str(rows) + "))")
        for database, rows in ((sf_db, 1), (other, 2), (sf_db, 1)):
            cur.execute(f'USE DATABASE "{database}"')
            cur.execute("USE SCHEMA PUBLIC")
            assert cur.execute("SELECT COUNT(*) FROM U").fetchone() == (rows,), database
            assert cur.execute("SELECT CURRENT_DATABASE()").fetchone() == (database,)
        for value in (1, 2, 1):
            cur.execute(f"SET limit_id = {value}")
            assert cur.execute("SELECT $limit_id + 0").fetchone() == (value,)
