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

import logging
import time
from typing import Any

import psycopg

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ChunkError
from cm_datacopy.postgres.ledger import Claim, Ledger

log = logging.getLogger(__name__)


class ChunkLocked(ChunkError):
    """Another attempt of the same chunk still holds it and is not stale yet."""

    retryable = True


def claim_attempt(
    pg: psycopg.Connection[Any],
    ledger: Ledger,
    cfg: SourceConfig,
    run_id: str,
    table_key: str,
    chunk_index: int,
    worker: str,
    fence: int | None = None,
) -> Claim:
    """``Ledger.claim_chunk`` bounded in time: ends a stale attempt's transaction if it holds the chunk."""
    deadline = time.monotonic() + cfg.chunk_timeout_seconds + cfg.lock_timeout_seconds
    while True:
        try:
            return ledger.claim_chunk(
                pg, run_id, table_key, chunk_index, worker, fence=fence, lock_timeout_seconds=cfg.lock_timeout_seconds
            )
        except psycopg.errors.LockNotAvailable:
            ended = ledger.end_stale_holder(pg, run_id, table_key, chunk_index, cfg.chunk_timeout_seconds)
            if ended:
                log.warning(
                    "chunk %s#%s: ended PostgreSQL backend %s, a stale attempt's transaction older than %s s",
                    table_key,
                    chunk_index,
                    ", ".join(map(str, ended)),
                    cfg.chunk_timeout_seconds,
                )
            elif time.monotonic() > deadline:
                raise ChunkLocked(
                    f"chunk {table_key}#{chunk_index} is held by another attempt that is still running (its "
                    f"transaction is younger than chunk_timeout_seconds={cfg.chunk_timeout_seconds}); retry after "
                    "it ends or times out"
                ) from None
