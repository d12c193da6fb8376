"""Ctrl-C (SIGINT) and SIGTERM stop `cm-datacopy run` within seconds and leave the run resumable."""

from __future__ import annotations

import signal
import time
from typing import Any

import psycopg
import pytest

from cm_datacopy_tests.helpers import cli, cli_popen, pg_rows, sf_execute, write_config

ROWS = 60_000
CHUNK = 1000


def _events(snowflake_server: Any, sf_db: str) -> None:
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"""CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'payload ' || seq8() || REPEAT('x', 300) AS BODY
            FROM TABLE(GENERATOR(ROWCOUNT => {ROWS}))""",
    )


def _done_chunks(pg: psycopg.Connection[Any]) -> int:
    exists = pg.execute("SELECT to_regclass('migration_status.migration_chunk_status') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    return pg.execute("SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'done'").fetchone()[
        0
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_which_resumes_later(snowflake_server, sf_db, pg_db, config_path, sig, code):
    _events(snowflake_server, sf_db)
    workers = 2
    table = {"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": CHUNK}
    write_config(config_path, snowflake_server, sf_db, pg_db, [table], workers=workers)
    proc = cli_popen(config_path, "run", "analytics")
    try:
        with psycopg.connect(**pg_db, autocommit=True) as watcher:
            deadline = time.monotonic() + 120
            while _done_chunks(watcher) < 3:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "no chunk was committed in two minutes"
                time.sleep(0.05)
            done_at_signal = _done_chunks(watcher)
            signalled = time.monotonic()
            proc.send_signal(sig)
            # A chunk is a few hundred kB: the slowest one so far bounds how long stopping may take.
            slowest = watcher.execute(
                "SELECT max(duration_seconds) FROM migration_status.migration_chunk_status WHERE status = 'done'"
            ).fetchone()[0]
            output = proc.communicate(timeout=30 + 5 * slowest)[0]
            stopped_in = time.monotonic() - signalled
            exited_at = watcher.execute("SELECT clock_timestamp()").fetchone()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == code, output
    assert stopped_in < 10 + 3 * slowest, f"took {stopped_in:.1f} s to stop"
    assert "stopped run analytics-" in output and f"({sig.name})" in output, output
    assert "cm-datacopy run analytics' to resume" in output, output
    assert f"analytics: stopping ({sig.name}): no new chunk starts" in output, output
    assert "✗" not in output, "chunks rolled back by the stop are not failures"

    # No chunk started after the signal: at most the chunks in flight could still commit.
    chunks = pg_rows(pg_db, "SELECT status, finished_at FROM migration_status.migration_chunk_status")
    done = [finished for status, finished in chunks if status == "done"]
    assert done_at_signal <= len(done) <= done_at_signal + workers, (done_at_signal, len(done))
    assert len(done) < len(chunks), "the run went on to the end"
    assert max(done) < exited_at
    assert not [s for s, _ in chunks if s == "running"], "a chunk was left running"
    time.sleep(0.5)
    assert len(
        [1 for s, _ in pg_rows(pg_db, "SELECT status, 1 FROM migration_status.migration_chunk_status") if s == "done"]
    ) == len(done), "a chunk committed after the process ended"
    run = pg_rows(pg_db, "SELECT status, last_error FROM migration_status.migration_runs")
    assert run[0][0] == "failed" and f"stopped by {sig.name}" in run[0][1], run

    resumed = cli(config_path, "run", "analytics", timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run analytics-" in resumed.stdout
    total, distinct, low, high = pg_rows(
        pg_db, "SELECT count(*), count(DISTINCT body), min(id), max(id) FROM copy.events"
    )[0]
    assert (total, distinct, low, high) == (ROWS, ROWS, 0, ROWS - 1)
    assert pg_rows(pg_db, "SELECT status, resume_attempt_count FROM migration_status.migration_runs") == [
        ("completed", 1)
    ]
