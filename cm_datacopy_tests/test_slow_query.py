"""A chunk whose Snowflake query runs longer than 60 s still copies.

Real warehouses queue, resume and scan: a chunk's query can take minutes. The connector cancels a
query after ``network_timeout`` unless ``execute`` passes its own timeout, and Snowflake answers a
long query with "in progress" (333333) that the connector polls. The stand-in delays the chunk's
SELECT by 65 s and answers "in progress" after 45 s, as Snowflake does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, cli, new_sf_database, pg_rows, sf_execute, write_config

DELAY = 65


@contextlib.contextmanager
def _delayed_standin(
    tmp_path: Path, table: str, rows: int, delay: float, match: str
) -> Iterator[tuple[standin.StandinSnowflake, str]]:
    """A faithful stand-in of its own that delays the statements matching ``match``, with ``PUBLIC.<table>``
    of ``rows`` rows (ID, BODY)."""
    settings = standin.FaithfulSettings(query_delay=delay, delay_match=match)
    password = os.environ[SNOWFLAKE_PASSWORD_ENV]  # set by the snowflake_server fixture; the config reads it
    with standin.running(password, tmp_path / table.lower(), faithful=True, settings=settings) as server:
        sf_db = new_sf_database(server)
        sf_execute(
            server,
            sf_db,
            f"CREATE TABLE PUBLIC.{table} AS SELECT seq8()::NUMBER(38,0) AS ID, 'row ' || seq8() AS BODY "
            f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))",
        )
        yield server, sf_db


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_chunk_query_longer_than_60_seconds_completes(snowflake_server, pg_db, tmp_path):
    with _delayed_standin(tmp_path, "SLOW", 500, DELAY, r'^SELECT "ID", "BODY" FROM .*"SLOW"') as (slow, sf_db):
        config = write_config(
            tmp_path / "cm_datacopy.yaml", slow, sf_db, pg_db, [{"source": "SLOW", "target_schema": "copy"}]
        )
        started = time.monotonic()
        result = cli(config, "run", "analytics", timeout=400)
        elapsed = time.monotonic() - started
        counters = slow.stats()["counters"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed >= DELAY
    assert counters["delayed_queries"] == 1  # the chunk's SELECT, once: it was not cancelled and retried
    assert counters["in_progress_answers"] >= 1  # the connector polled the running query
    assert counters.get("abort_requests", 0) == 0
    assert pg_rows(pg_db, "SELECT count(*), count(DISTINCT id) FROM copy.slow") == [(500, 500)]
    assert pg_rows(
        pg_db, "SELECT bool_and(source_checksum = target_checksum) FROM migration_status.migration_chunk_status"
    ) == [(True,)]


def test_a_chunk_ends_when_its_transaction_commits_not_when_it_began(snowflake_server, pg_db, tmp_path):
    """The ledger's finished_at is the chunk's commit. Snowflake's checksum of the chunk (here 1.5 s late)
    is awaited inside the chunk's transaction, whose start PostgreSQL's now() would give instead."""
    delay = 1.5
    checksum = r'^SELECT COUNT\(\*\), COALESCE\(SUM\(.*"LATE"'
    with _delayed_standin(tmp_path, "LATE", 400, delay, checksum) as (late, sf_db):
        table = {"source": "LATE", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 200}
        config = write_config(tmp_path / "cm_datacopy.yaml", late, sf_db, pg_db, [table])
        result = cli(config, "run", "analytics", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    chunks = pg_rows(
        pg_db,
        "SELECT chunk_index, extract(epoch FROM finished_at - started_at)::float8, duration_seconds "
        "FROM migration_status.migration_chunk_status WHERE status = 'done' ORDER BY chunk_index",
    )
    assert len(chunks) == 2
    for index, elapsed, duration in chunks:
        assert elapsed >= delay, f"chunk {index}: finished_at is {elapsed:.2f} s after started_at"
        assert abs(elapsed - duration) < 0.5, f"chunk {index}: {elapsed:.2f} s in the ledger, measured {duration:.2f} s"
