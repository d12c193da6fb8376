"""Concurrency: racing runs of one source, two sources at once, and a resume racing a frozen worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from cm_datacopy.chunk import ChunkTask, copy_chunk
from cm_datacopy.chunk.task import worker_name
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy_tests.helpers import cli, cli_popen, load, pg_rows, sf_execute, source_body, write_config

ROWS = 40_000


def _events(snowflake_server: Any, sf_db: str, rows: int = ROWS) -> None:
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"""CREATE TABLE EVENTS AS SELECT IFF(seq8() % 101 = 7, NULL, seq8())::NUMBER(38,0) AS ID,
            'payload ' || seq8() || ' ' || REPEAT('x', 200) AS BODY FROM TABLE(GENERATOR(ROWCOUNT => {rows}))""",
    )


def _table(schema: str = "copy", chunk_size: int = 2000) -> dict[str, Any]:
    return {"source": "EVENTS", "target_schema": schema, "chunk_key": "ID", "chunk_size": chunk_size}


def _assert_exact_copy(pg_db: dict[str, Any], schema: str = "copy", rows: int = ROWS) -> None:
    total, distinct = pg_rows(pg_db, f"SELECT count(*), count(DISTINCT body) FROM {schema}.events")[0]
    assert (total, distinct) == (rows, rows), f"{total} rows, {distinct} distinct, expected {rows}"
    ledger = pg_rows(
        pg_db,
        "SELECT r.status, count(*) FILTER (WHERE c.status <> 'done'), sum(c.rows_copied) "
        "FROM migration_status.migration_runs r JOIN migration_status.migration_chunk_status c USING (run_id) "
        "WHERE c.table_key = %s GROUP BY r.run_id, r.status ORDER BY max(r.started_at) DESC LIMIT 1",
        (f"{schema}.events",),
    )
    assert ledger == [("completed", 0, rows)]


def test_two_runs_of_one_source_started_together(snowflake_server, sf_db, pg_db, config_path):
    _events(snowflake_server, sf_db)
    write_config(config_path, snowflake_server, sf_db, pg_db, [_table()])
    procs = [cli_popen(config_path, "run", "analytics") for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outputs
    refused = outputs[[p.returncode for p in procs].index(3)]
    assert "source 'analytics' is already being copied by another run" in refused
    assert pg_rows(pg_db, "SELECT count(*) FROM migration_status.migration_runs") == [(1,)]
    _assert_exact_copy(pg_db)


def test_two_sources_at_once_both_right(snowflake_server, sf_db, pg_db, config_path):
    _events(snowflake_server, sf_db, 20_000)
    other = source_body(snowflake_server, sf_db, pg_db, [_table("second", 1500)], workers=2)
    write_config(
        config_path, snowflake_server, sf_db, pg_db, [_table("first")], workers=2, extra_sources={"conflict": other}
    )
    procs = [cli_popen(config_path, "run", name) for name in ("analytics", "conflict")]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    _assert_exact_copy(pg_db, "first", 20_000)
    _assert_exact_copy(pg_db, "second", 20_000)
    assert pg_rows(pg_db, "SELECT source, status FROM migration_status.migration_runs ORDER BY source") == [
        ("analytics", "completed"),
        ("conflict", "completed"),
    ]


def _stop_inside_copy(proc: subprocess.Popen[str], pg_db: dict[str, Any], timeout: float = 60) -> tuple[Any, ...]:
    """SIGSTOP the worker while its chunk transaction is inside COPY (rows sent, not committed).

    Returns the running chunk's (run_id, table_key, chunk_index, attempts) and the COPY backend's pid.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(**pg_db, autocommit=True) as watcher:
        while time.monotonic() < deadline and proc.poll() is None:
            copying = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_xid IS NOT NULL AND query ILIKE 'COPY%%' AND state = 'active' "
                "AND query NOT ILIKE '%%cm_datacopy_selftest%%'"  # a chunk's COPY, not the run-start self-test's
            ).fetchall()
            if copying:
                proc.send_signal(signal.SIGSTOP)
                time.sleep(0.3)
                running = watcher.execute(
                    "SELECT run_id, table_key, chunk_index, attempts FROM migration_status.migration_chunk_status "
                    "WHERE status = 'running'"
                ).fetchall()
                still = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND query ILIKE 'COPY%%' "
                    "AND state = 'active' AND wait_event = 'ClientRead'",
                    (copying[0][0],),
                ).fetchone()[0]
                if len(running) == 1 and still:
                    return (*running[0], copying[0][0])
                proc.send_signal(signal.SIGCONT)  # between two chunks after all: try again
            time.sleep(0.005)
    raise AssertionError("the run ended before it could be frozen inside a chunk")


@pytest.mark.timeout(240)
def test_resume_races_a_frozen_worker(snowflake_server, sf_db, pg_db, config_path):
    """A worker frozen inside its chunk's COPY (a Lambda stopped at its timeout: the TCP connection stays
    open) must not make the next attempt hang, and must not overwrite it when it wakes up."""
    _events(snowflake_server, sf_db)
    chunk_timeout = 5
    write_config(
        config_path,
        snowflake_server,
        sf_db,
        pg_db,
        [_table()],
        chunk_timeout_seconds=chunk_timeout,
        lock_timeout_seconds=2,
    )
    cfg = load(config_path).source("analytics")
    proc = cli_popen(config_path, "run", "analytics")
    try:
        run_id, table_key, index, old_attempt, old_pid = _stop_inside_copy(proc, pg_db)
        time.sleep(chunk_timeout + 1)
        # PostgreSQL has not ended the frozen COPY: statement_timeout is not acted on while the server
        # waits for the client's COPY data. (This is why the next attempt must end it.)
        assert pg_rows(pg_db, "SELECT state FROM pg_stat_activity WHERE pid = %s", (old_pid,)) == [("active",)]

        # The frozen process still holds the source lock: a second run is refused, not queued.
        assert cli(config_path, "run", "analytics").returncode == 3

        # A new worker (as a new Lambda: copy_chunk alone, without the source lock) resumes the chunk.
        outcome: dict[str, Any] = {}

        def resume() -> None:
            try:
                outcome["result"] = copy_chunk(cfg, ChunkTask("analytics", run_id, table_key, index))
            except Exception as exc:
                outcome["error"] = exc

        began = time.monotonic()
        thread = threading.Thread(target=resume, daemon=True)
        thread.start()
        thread.join(chunk_timeout + 30)
        assert not thread.is_alive(), "the resume hangs behind the frozen worker's transaction"
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert result.outcome == "copied" and result.attempt == old_attempt + 1
        assert time.monotonic() - began < chunk_timeout + 30
        assert pg_rows(pg_db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (old_pid,)) == [(0,)]
        resumed = pg_rows(
            pg_db,
            "SELECT status, attempts, worker, rows_copied FROM migration_status.migration_chunk_status "
            "WHERE run_id = %s AND table_key = %s AND chunk_index = %s",
            (run_id, table_key, index),
        )
        assert resumed == [("done", old_attempt + 1, worker_name(), result.rows)]
        versions = pg_rows(pg_db, "SELECT body, xmin::text FROM copy.events")
    finally:
        proc.send_signal(signal.SIGCONT)

    # The old worker wakes up: its chunk was fenced off; it goes on with the other chunks.
    proc.communicate(timeout=120)
    after = pg_rows(
        pg_db,
        "SELECT status, attempts, worker, rows_copied FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s AND table_key = %s AND chunk_index = %s",
        (run_id, table_key, index),
    )
    assert after == resumed, "the woken worker changed the newer attempt's ledger row"
    now = dict(pg_rows(pg_db, "SELECT body, xmin::text FROM copy.events"))
    assert all(now[body] == xmin for body, xmin in versions), "the woken worker rewrote committed rows"
    for _ in range(3):
        if cli(config_path, "run", "analytics").returncode == 0:
            break
    _assert_exact_copy(pg_db)


def test_a_frozen_process_loses_the_source_lock_after_idle_session_timeout(sf_db, snowflake_server, pg_db, config_path):
    """The source lock's session ends when its process stops answering (idle_session_timeout), so a
    frozen runner does not block the source for ever; while it answers, the heartbeat keeps it."""
    _events(snowflake_server, sf_db, 10)
    write_config(config_path, snowflake_server, sf_db, pg_db, [_table()], stale_lock_seconds=5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cm_datacopy.config import load_config\n"
            "from cm_datacopy.postgres.lock import SourceLock\n"
            f"cfg = load_config({str(config_path)!r}).source('analytics')\n"
            "with SourceLock(cfg) as lock:\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(8)\n"
            "    print('lost' if lock.lost.is_set() else 'kept', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert holder.stdout.readline().strip() == "kept", "the heartbeat keeps a live holder's session"
        cfg = load(config_path).source("analytics")
        holder.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while True:
            try:
                with SourceLock(cfg):
                    break
            except Exception:
                assert time.monotonic() < deadline, "the frozen holder kept the source lock"
                time.sleep(0.5)
    finally:
        holder.kill()
        holder.wait()
