"""Copy one chunk: the unit of work every caller runs (the CLI's runner, the Dagster assets, the
Lambda handler and the ECS task all call ``copy_chunk``).

Follow a row from Snowflake to PostgreSQL in ``copy_chunk`` below:

1. the ledger says which rows the chunk holds (its key range), which columns, and where they load,
   so a worker needs only the config and the task (run, table, chunk);
2. a new attempt number is claimed (committed at once) — it fences off older attempts; one statement
   does 1 and 2;
3. Snowflake runs the chunk's SELECT (``snowflake/scan.py``); its result streams as Arrow record
   batches, while a second Snowflake session computes the chunk's checksum (``checksum.py``);
4. one PostgreSQL transaction: lock the chunk's ledger row, check the attempt is still the newest
   and the chunk not done, delete the target rows of the chunk's range (in place; a publish-mode
   shadow never holds rows of an unfinished chunk), COPY the batches in (``postgres/encoder.py``,
   no per-row Python), compare PostgreSQL's checksum of the range with Snowflake's, mark the chunk
   done with its rows and both checksums, commit.

A process killed at any instant leaves either the old rows and an open chunk, or the new rows and
a done chunk. A worker frozen inside step 4 cannot block the next attempt for long: PostgreSQL
ends its transaction after ``chunk_timeout_seconds`` when it is between statements or running one;
frozen inside COPY, where the server waits for client data and acts on neither, the next attempt
ends it once it is older than ``chunk_timeout_seconds`` (``postgres/fence.py``). A task with a
deadline (a Lambda's timeout) rolls back by itself before the deadline rather than being killed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from cm_datacopy import checksum
from cm_datacopy.chunk.nul import NulPolicy
from cm_datacopy.chunk.task import ChunkResult, ChunkTask, classify, worker_name
from cm_datacopy.chunk.worker import Worker
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ChunkError, DatacopyError, DeadlineExceeded, StopRequested, TruncationRefused
from cm_datacopy.postgres.encoder import copy_batches, encoder_for
from cm_datacopy.postgres.fence import claim_attempt
from cm_datacopy.postgres.ledger import ChunkState, Ledger, RunClosed
from cm_datacopy.postgres.sql import BoundIdentifier, chunk_where
from cm_datacopy.snowflake.scan import Scan, read_batches

Guard = Callable[[psycopg.Cursor[Any]], None]


class ChunkVerificationError(ChunkError):
    """The rows in PostgreSQL do not match Snowflake's checksum; the chunk was rolled back."""

    retryable = True  # once: the source may have changed under a live read; twice in a row is final


def copy_chunk(
    cfg: SourceConfig,
    task: ChunkTask,
    *,
    worker: Worker | None = None,
    guard: Guard | None = None,
    stop: threading.Event | None = None,
) -> ChunkResult:
    """Copy one chunk of one table in one transaction; safe to call again for the same chunk.

    Never raises for a failed chunk: the result says what happened and whether a retry can help.
    ``guard`` runs inside the chunk's transaction just before it commits (the CLI's runner checks
    it still holds the source's lock there); ``stop``, once set, rolls the chunk back at its next
    check, like a deadline.
    """
    limits = _Limits(task, stop)
    with contextlib.ExitStack() as stack:
        w = worker or stack.enter_context(Worker(cfg))
        ledger = w.ledger
        started = time.monotonic()
        attempt, previous_error, step = 0, None, "claiming the chunk's next attempt"
        try:
            pg = w.pg()
            # 1. What the chunk is, from the ledger alone (a Lambda or ECS worker needs nothing else), and
            # 2. a new attempt number, committed before any work: older attempts can no longer commit.
            #    One statement does both (``Ledger.claim_chunk``).
            claim = claim_attempt(
                pg, ledger, cfg, task.run_id, task.table_key, task.chunk_index, worker_name(), task.fence
            )
            run, table, chunk = claim.run, claim.table, claim.chunk
            if claim.attempt is None:  # done (maybe meanwhile), or another attempt took the task's place
                state = (
                    claim.state
                    if claim.state.status == "done"
                    else ledger.chunk_state(pg, task.run_id, task.table_key, task.chunk_index)
                )
                return _from_ledger(task, "already_done" if state.status == "done" else "superseded", state)
            attempt, previous_error = claim.attempt, claim.previous_error
            limits.check("before reading from Snowflake")

            # 3. Snowflake: the chunk's checksum (on a second session, meanwhile) and its rows as Arrow
            #    batches, streamed while they are written.
            step = f"reading {table.source_table} from Snowflake"
            scan = Scan(table.source_table, run.snapshot_at, chunk)
            nuls = NulPolicy.for_source(cfg, table.columns, chunk.key_column)
            expected_future = (
                w.checksum_thread().submit(
                    checksum.snowflake_checksum, w.snowflake("checksum"), scan, table.columns, nuls.replacement
                )
                if cfg.verify
                else None
            )
            batches = limits.each(read_batches(w.snowflake(), scan, table.columns))

            # 4. One PostgreSQL transaction for the rows and the ledger.
            load = sql.Identifier(table.load_schema, table.load_table)
            key_column = table.target_column(chunk.key_column) if chunk.key_column else None
            where, params = chunk_where(chunk, key_column)
            with pg.transaction(), pg.cursor() as cur:
                current = ledger.lock_chunk(cur, run.run_id, table.table_key, chunk.index, _timeouts(cfg))
                if current.status == "done" or current.attempts != attempt:
                    return ChunkResult(task, "superseded", attempt=attempt, seconds=time.monotonic() - started)
                if table.mode == "in_place":
                    if key_column is None:
                        _guard_full_replace(cur, ledger, run.run_id, table.table_key)
                    step = f"deleting the chunk's range from {table.load_schema}.{table.load_table}"
                    delete_from = BoundIdentifier(table.load_schema, table.load_table)  # % in names, with params
                    cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(delete_from, where), params)
                    replaced = max(cur.rowcount, 0)
                else:
                    # A shadow holds only rows of done chunks (each commits with its done mark), so this
                    # chunk's range is empty there: no delete, no scan.
                    replaced = 0
                step = f"copying into {table.load_schema}.{table.load_table}"
                rows, nbytes = copy_batches(cur, load, encoder_for(cur, load, table.columns), batches, nuls.apply)

                # Verification inside the load: PostgreSQL's checksum of the range must equal Snowflake's.
                limits.check("before the checksum")
                step = "verifying the chunk's checksum"
                actual = checksum.postgres_checksum(cur, load, table.columns, where, params) if cfg.verify else None
                expected = expected_future.result() if expected_future is not None else None
                if expected is not None and expected != actual:
                    raise ChunkVerificationError(
                        f"checksums differ after loading: Snowflake {expected}, PostgreSQL {actual}"
                        + ("; the previous attempt differed too" if _was_mismatch(previous_error) else "")
                    )
                limits.check("before the commit")
                step = "committing"
                if guard is not None:
                    guard(cur)
                w.committing = True
                seconds = time.monotonic() - started
                ledger.mark_done(  # share-locks the run's row: a replaced run commits nothing (RunClosed)
                    cur,
                    run.run_id,
                    table.table_key,
                    chunk.index,
                    rows=rows,
                    nbytes=nbytes,
                    seconds=seconds,
                    source_rows=expected.rows if expected else None,
                    source_checksum=expected.checksum if expected else None,
                    target_checksum=actual.checksum if actual else None,
                    nul_replaced=nuls.replaced,
                )
            w.committing = False
            return ChunkResult(
                task,
                "copied",
                rows=rows,
                bytes=nbytes,
                seconds=seconds,
                attempt=attempt,
                source_rows=expected.rows if expected else None,
                source_checksum=expected.checksum if expected else None,
                target_checksum=actual.checksum if actual else None,
                rows_replaced=replaced,
                nul_replaced=nuls.replaced,
                worker=worker_name(),
            )
        except RunClosed as exc:
            w.committing = False
            w.reset()
            return ChunkResult(task, "superseded", attempt=attempt, error=str(exc), retryable=False)
        except Exception as exc:
            w.committing = False
            if stop is not None and stop.is_set() and not isinstance(exc, DatacopyError):
                exc = StopRequested(f"chunk {task.name} stopped on request and rolled back")  # a cancelled statement
            message, retryable = classify(exc, step)
            if isinstance(exc, ChunkVerificationError) and _was_mismatch(previous_error):
                retryable = False  # the same mismatch twice: not a race with a live source
            seconds = time.monotonic() - started
            w.reset()
            if attempt:
                with contextlib.suppress(Exception), Worker(cfg) as fresh:
                    ledger.record_failure(
                        fresh.pg(), task.run_id, task.table_key, task.chunk_index, attempt, message, seconds, retryable
                    )
            return ChunkResult(
                task,
                "failed",
                seconds=seconds,
                attempt=attempt,
                error=message,
                retryable=retryable,
                worker=worker_name(),
            )


def _from_ledger(task: ChunkTask, outcome: str, state: ChunkState) -> ChunkResult:
    """A chunk this call did not copy: the figures of the attempt that did, as the ledger has them."""
    return ChunkResult(
        task,
        outcome,  # type: ignore[arg-type]
        rows=state.rows or 0,
        bytes=state.bytes or 0,
        seconds=state.seconds or 0.0,
        attempt=state.attempts,
        source_rows=state.source_rows,
        source_checksum=state.source_checksum,
        target_checksum=state.target_checksum,
        nul_replaced=state.nul_replaced,
        worker=state.worker,
    )


def _was_mismatch(previous_error: str | None) -> bool:
    return bool(previous_error and previous_error.startswith("checksums differ"))


class _Limits:
    """When a chunk must give up and roll back: its task's deadline, or a stop request."""

    def __init__(self, task: ChunkTask, stop: threading.Event | None) -> None:
        self.task, self.stop = task, stop

    def check(self, where: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise StopRequested(f"chunk {self.task.name} stopped on request ({where}) and rolled back")
        if self.task.deadline is not None and time.time() >= self.task.deadline:
            raise DeadlineExceeded(
                f"chunk {self.task.name} would not finish before its deadline ({where}); rolled back, retry it "
                "(or plan smaller chunks: chunk_max_seconds)"
            )

    def each(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.check("between batches")
            yield batch


def _timeouts(cfg: SourceConfig) -> dict[str, str]:
    """Bound how long the chunk's transaction can hold locks if its worker freezes, and how long it waits
    (set with the chunk's lock, in one round trip)."""
    return {
        "statement_timeout": f"{cfg.chunk_timeout_seconds}s",
        "idle_in_transaction_session_timeout": f"{cfg.chunk_timeout_seconds}s",
        "lock_timeout": f"{cfg.lock_timeout_seconds}s",
    }


def _guard_full_replace(cur: psycopg.Cursor[Any], ledger: Ledger, run_id: str, table_key: str) -> None:
    """Truncation protection for an in-place table copied as one chunk, which replaces every target row.

    Two independent layers: the ledger (no chunk of this table is done in this run, read under the
    chunk's row lock), and the target itself, whose rows are deleted only inside this transaction,
    which reloads them before it commits: the table is never left empty.
    """
    if ledger.done_chunks_of_table(cur, run_id, table_key):
        raise TruncationRefused(f"refusing to replace {table_key}: the ledger shows a completed chunk in run {run_id}")
