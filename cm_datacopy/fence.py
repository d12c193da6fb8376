"""Claiming a chunk's next attempt without hanging behind a stale one.

A worker's chunk transaction holds the chunk's ledger row (``SELECT ... FOR UPDATE``) until it ends.
A worker that freezes inside ``COPY ... FROM STDIN`` (a Lambda stopped at its timeout, a paused VM,
SIGSTOP) keeps that transaction open indefinitely: while PostgreSQL waits for COPY data from the
client it does not act on ``statement_timeout`` (nor ``transaction_timeout``), the session is not
idle in transaction, and TCP keepalives are answered by the frozen client's kernel. Only a backend
termination ends it.

So the next attempt waits ``lock_timeout_seconds`` at a time for the row; while it is held by a
transaction older than ``chunk_timeout_seconds`` (which could not have committed anyway: its
statement timeout has passed), it ends that transaction's backend with ``pg_terminate_backend``
(allowed for backends of the same role) and claims the attempt. A younger holder is a live worker:
after ``chunk_timeout_seconds + lock_timeout_seconds`` the claim gives up with the usual
"locked by another worker" error.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import psycopg

from cm_datacopy import ledger
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ChunkError

log = logging.getLogger(__name__)


def claim_attempt(
    pg: psycopg.Connection[Any], cfg: SourceConfig, run_id: str, table_key: str, chunk_index: int, worker: str
) -> int | None:
    """``ledger.start_attempt`` bounded in time: ends a stale attempt's transaction if it holds the chunk."""
    deadline = time.monotonic() + cfg.chunk_timeout_seconds + cfg.lock_timeout_seconds
    with pg.transaction():
        pg.execute("SELECT set_config('lock_timeout', %s, false)", (f"{cfg.lock_timeout_seconds}s",))
    try:
        while True:
            try:
                return ledger.start_attempt(pg, run_id, table_key, chunk_index, worker)
            except psycopg.errors.LockNotAvailable:
                ended = end_stale_attempt(pg, cfg, run_id, table_key, chunk_index)
                if not ended and time.monotonic() > deadline:
                    raise ChunkError(
                        f"chunk {table_key}#{chunk_index}: locked by another worker that is still running; "
                        "retry after it ends or times out"
                    ) from None
    finally:
        if not pg.closed and not pg.broken:
            with contextlib.suppress(psycopg.Error), pg.transaction():
                pg.execute("RESET lock_timeout")


def end_stale_attempt(
    pg: psycopg.Connection[Any], cfg: SourceConfig, run_id: str, table_key: str, chunk_index: int
) -> list[int]:
    """Terminate the backend whose transaction holds the chunk's ledger row, if older than the chunk timeout.

    The holder is found by the row's ``xmax`` (the locking transaction), never by guessing.
    Returns the terminated backend pids.
    """
    with pg.transaction(), pg.cursor() as cur:
        cur.execute(
            "SELECT a.pid, pg_terminate_backend(a.pid, 5000) FROM migration_status.migration_chunk_status c "
            "JOIN pg_stat_activity a ON a.backend_xid = c.xmax "
            "WHERE c.run_id = %s AND c.table_key = %s AND c.chunk_index = %s AND a.pid <> pg_backend_pid() "
            "AND a.xact_start < now() - make_interval(secs => %s)",
            (run_id, table_key, chunk_index, cfg.chunk_timeout_seconds),
        )
        ended = [pid for pid, _ in cur.fetchall()]
    if ended:
        log.warning(
            "chunk %s#%s: ended PostgreSQL backend %s, a stale attempt's transaction older than %s s",
            table_key,
            chunk_index,
            ", ".join(map(str, ended)),
            cfg.chunk_timeout_seconds,
        )
    return ended
