"""The resume rule and the source lock, as a user meets them on the command line.

Only the source's latest run is ever resumed: a run replaced by a newer one is closed as
``superseded``. A run that loses its source lock (frozen past ``stale_lock_seconds``) commits
nothing more and says so. Lock waits say what they waited for.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import psycopg
import pytest

from cm_datacopy_tests.helpers import cli, cli_popen, pg_rows, sf_connect, sf_execute
from cm_datacopy_tests.test_copy_engine import _events_config, _events_table, _kill_inside_a_chunk_transaction


def _source_rows(snowflake_server: Any, sf_db: str) -> list[tuple[Any, ...]]:
    conn = sf_connect(snowflake_server, sf_db)
    try:
        cur = conn.cursor()
        cur.execute('SELECT "ID", "BODY" FROM "PUBLIC"."EVENTS"')
        return sorted(cur.fetchall(), key=lambda r: (r[0] is not None, r[0] or 0, r[1]))
    finally:
        conn.close()


def _target_rows(pg_db: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = pg_rows(pg_db, "SELECT id, body FROM copy.events")
    return sorted(
        ((int(i) if i is not None else None, b) for i, b in rows), key=lambda r: (r[0] is not None, r[0] or 0, r[1])
    )


def _runs(pg_db: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {
        run_id: (status, superseded_by)
        for run_id, status, superseded_by in pg_rows(
            pg_db, "SELECT run_id, status, superseded_by FROM migration_status.migration_runs"
        )
    }


@pytest.mark.parametrize("mode", ["in_place", "publish"])
def test_a_run_replaced_by_a_newer_one_is_never_resumed(snowflake_server, sf_db, pg_db, config_path, mode):
    """Kill run X mid-copy; --no-resume completes run Y; the source changes; a plain run must copy the
    new source in full (a new run), never finish X's old chunks on top of Y's rows."""
    _events_table(snowflake_server, sf_db, 20_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=1000, mode=mode)
    proc = cli_popen(config_path, "run", "analytics")
    _kill_inside_a_chunk_transaction(proc, pg_db)
    (killed,) = _runs(pg_db)

    fresh = cli(config_path, "run", "analytics", "--no-resume")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    runs = _runs(pg_db)
    (completed,) = (r for r in runs if r != killed)
    assert runs[killed] == ("superseded", completed), "the replaced run is closed in the same transaction"
    assert _target_rows(pg_db) == _source_rows(snowflake_server, sf_db)

    # The source changes: rows deleted, rows added, rows updated.
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        "DELETE FROM EVENTS WHERE ID % 7 = 3",
        "UPDATE EVENTS SET BODY = 'changed ' || ID WHERE ID % 11 = 5",
        "INSERT INTO EVENTS SELECT 100000 + seq8(), 'new ' || seq8(), CURRENT_TIMESTAMP()::TIMESTAMP_NTZ "
        "FROM TABLE(GENERATOR(ROWCOUNT => 1500))",
    )
    again = cli(config_path, "run", "analytics")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"the latest run {completed} is completed" in again.stdout
    assert killed not in again.stdout, "the superseded run is not resumed"
    assert _target_rows(pg_db) == _source_rows(snowflake_server, sf_db)
    statuses = _runs(pg_db)
    assert statuses[killed][0] == "superseded" and statuses[completed][0] == "completed"
    assert [s for s, _ in statuses.values()].count("completed") == 2

    # Resuming a closed run is refused by the ledger itself, whoever asks.
    from cm_datacopy.errors import DatacopyError
    from cm_datacopy.postgres.ledger import Ledger

    with psycopg.connect(**pg_db) as conn, pytest.raises(DatacopyError, match="closed"):
        Ledger().mark_resumed(conn, killed)


def test_a_frozen_run_that_lost_its_lock_commits_nothing_when_it_wakes(snowflake_server, sf_db, pg_db, config_path):
    """While frozen (within stale_lock_seconds) the source is busy and the message says when that ends;
    once the lock is gone a new run resumes and completes; the woken process then exits 3 and changes
    nothing (no 'completed … 0 chunks')."""
    _events_table(snowflake_server, sf_db, 30_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=1000, stale_lock_seconds=5)
    proc = cli_popen(config_path, "run", "analytics")
    try:
        deadline = time.monotonic() + 120
        while not _done_chunks(pg_db) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
        busy = cli(config_path, "run", "analytics")
        assert busy.returncode == 3 and "stale_lock_seconds" in busy.stderr, busy.stderr

        # The frozen holder's session is ended by the server after stale_lock_seconds.
        deadline = time.monotonic() + 60
        while True:
            taken = cli(config_path, "run", "analytics")
            if taken.returncode != 3:
                break
            assert time.monotonic() < deadline, "the frozen run kept the source lock"
            time.sleep(1)
        assert taken.returncode == 0, taken.stdout + taken.stderr
        assert "resuming run" in taken.stdout
        ledger_before = pg_rows(
            pg_db, "SELECT chunk_index, status, attempts, rows_copied FROM migration_status.migration_chunk_status"
        )
        rows_before = pg_rows(pg_db, "SELECT count(*), sum(hashtext(body)) FROM copy.events")
    finally:
        proc.send_signal(signal.SIGCONT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, output
    assert "lost the lock" in output and "completed" not in output.split("lost the lock")[-1]
    assert (
        pg_rows(pg_db, "SELECT chunk_index, status, attempts, rows_copied FROM migration_status.migration_chunk_status")
        == ledger_before
    ), "the woken process changed the ledger"
    assert pg_rows(pg_db, "SELECT count(*), sum(hashtext(body)) FROM copy.events") == rows_before
    assert pg_rows(pg_db, "SELECT status FROM migration_status.migration_runs") == [("completed",)]


def _done_chunks(pg_db: dict[str, Any]) -> int:
    with psycopg.connect(**pg_db, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('migration_status.migration_chunk_status')").fetchone()[0]
        if not exists:
            return 0
        return conn.execute(
            "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'done'"
        ).fetchone()[0]


def test_a_lock_held_on_the_target_is_named_not_blamed_on_another_worker(snowflake_server, sf_db, pg_db, config_path):
    _events_table(snowflake_server, sf_db, 3_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=1000, lock_timeout_seconds=1)
    assert cli(config_path, "run", "analytics").returncode == 0
    with psycopg.connect(**pg_db) as holder:
        holder.execute("LOCK TABLE copy.events IN ACCESS EXCLUSIVE MODE")
        blocked = cli(config_path, "run", "analytics", "--no-resume")
        holder.rollback()
    assert blocked.returncode == 1
    assert "waited longer than lock_timeout_seconds for a PostgreSQL lock while deleting the chunk's range" in (
        blocked.stdout
    )
    assert "another worker" not in blocked.stdout + blocked.stderr
    errors = pg_rows(
        pg_db,
        "SELECT DISTINCT error_retryable FROM migration_status.migration_chunk_status WHERE status = 'failed'",
    )
    assert errors == [(True,)], "a lock wait is worth another attempt"
    assert cli(config_path, "run", "analytics").returncode == 0


def test_a_chunk_of_a_replaced_run_commits_nothing(snowflake_server, sf_db, pg_db, config_path):
    """A worker that holds no source lock (a Lambda, an ECS task) and wakes up with a chunk of a run
    that was replaced meanwhile: its rows never land over the newer run's."""
    from cm_datacopy.chunk import ChunkTask, copy_chunk
    from cm_datacopy.postgres.ledger import Ledger
    from cm_datacopy.run.resume import start_or_resume
    from cm_datacopy_tests.helpers import load

    _events_table(snowflake_server, sf_db, 3_000)
    _events_config(config_path, snowflake_server, sf_db, pg_db, chunk_size=1000)
    cfg = load(config_path).source("analytics")
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        old = start_or_resume(cfg, pg)
        chunk = Ledger().chunks(pg, old.run_id)[1]
    assert cli(config_path, "run", "analytics", "--no-resume").returncode == 0
    before = pg_rows(pg_db, "SELECT count(*), sum(hashtext(body)), max(xmin::text::bigint) FROM copy.events")

    late = copy_chunk(cfg, ChunkTask("analytics", old.run_id, chunk.table_key, chunk.index))
    assert late.outcome == "superseded" and late.retryable is False
    assert "superseded" in (late.error or "")
    assert pg_rows(pg_db, "SELECT count(*), sum(hashtext(body)), max(xmin::text::bigint) FROM copy.events") == before
    assert pg_rows(
        pg_db,
        "SELECT status FROM migration_status.migration_chunk_status WHERE run_id = %s AND chunk_index = %s",
        (old.run_id, chunk.index),
    ) != [("done",)]
