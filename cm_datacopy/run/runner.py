"""Run a source to the end from one process: start or resume, copy every open chunk, publish, finish.

This is ``cm-datacopy run``. Chunks are handed to ``workers`` threads one at a time, so a stop
(Ctrl-C, SIGTERM: ``stop`` is set) starts no new chunk: chunks in flight roll back at their next
check (between batches, before the checksum and the commit) unless they are already committing,
and the run is left ``failed``, resumable. A run that loses its source lock stops the same way
and leaves the run's status alone: another run of the source may own it now.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cm_datacopy.chunk import ChunkResult, ChunkTask, Worker, copy_chunk
from cm_datacopy.chunk.task import classify
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.ranges import Chunk
from cm_datacopy.run.publish import PublishResult, publish_table
from cm_datacopy.run.resume import RunStart, start_or_resume


class Stop(threading.Event):
    """A request to stop the run, with its reason (e.g. the signal's name)."""

    reason: str | None = None

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@dataclass(frozen=True)
class TableTotals:
    """A table's chunks at the start of this process's work (earlier attempts included)."""

    table_key: str
    chunks_total: int
    chunks_done: int
    rows_done: int


@dataclass(frozen=True)
class RunPlan:
    todo: list[Chunk]
    tables: list[TableTotals]


@dataclass
class RunOutcome:
    start: RunStart
    status: str = "running"
    chunks_total: int = 0
    chunks_copied: int = 0
    chunks_failed: int = 0
    rows: int = 0
    seconds: float = 0.0
    published: list[PublishResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped early (a signal's name), if it did
    lock_lost: bool = False

    @property
    def run_id(self) -> str:
        return self.start.run_id

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# Events, by kind: start (RunStart), plan (RunPlan), chunk_start (Chunk), chunk (ChunkResult), error (str),
# published (PublishResult), publish_refused (str), stopping (str: the reason).
Event = RunStart | RunPlan | Chunk | ChunkResult | PublishResult | str
Progress = Callable[[str, Any], None]


def run_source(
    cfg: SourceConfig,
    *,
    no_resume: bool | None = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> RunOutcome:
    """Copy the source's open chunks with ``cfg.workers`` threads; the run's status is in the ledger."""
    notify = progress or (lambda _kind, _item: None)
    stop = stop or Stop()
    ledger = Ledger(cfg.postgres.ledger_schema)
    with SourceLock(cfg) as lock, psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        start = start_or_resume(cfg, pg, no_resume=no_resume)
        notify("start", start)
        outcome = RunOutcome(start)
        todo = ledger.chunks(pg, start.run_id, open_only=True)
        outcome.chunks_total = len(todo)
        notify("plan", RunPlan(todo, _totals(ledger, pg, start.run_id)))
        began = time.monotonic()
        publish_error: str | None = None
        try:
            _copy_chunks(cfg, start.run_id, todo, lock, stop, outcome, notify)
            outcome.stopped = stop.reason if stop.is_set() else None
            if not outcome.lock_lost and not stop.is_set():
                publish_error = _publish_ready_tables(cfg, ledger, pg, start.run_id, outcome, notify)
        finally:
            outcome.seconds = time.monotonic() - began
            if outcome.lock_lost and _still_owned(ledger, pg, lock, start):
                outcome.lock_lost = False  # e.g. a cut connection: nobody else ran it meanwhile
            if outcome.lock_lost:
                outcome.status = "lock lost"
            else:
                problem = f"stopped by {outcome.stopped}; run again to resume" if outcome.stopped else None
                problem = " ".join(p for p in (problem, publish_error) if p) or None
                outcome.status = _finish(cfg, ledger, pg, start.run_id, problem)
        return outcome


def _still_owned(ledger: Ledger, pg: psycopg.Connection[Any], lock: SourceLock, start: RunStart) -> bool:
    """After losing the lock: take it back and check no other process resumed or replaced the run
    meanwhile (its resume count is still ours). Only then may this process record the run's end."""
    if not lock.reacquire():
        return False
    try:
        with psycopg.connect(**lock.cfg.postgres.connect_kwargs()) as fresh:
            run = ledger.get_run(fresh, start.run_id)
    except psycopg.Error:
        return False
    return run is not None and run.is_open and run.resume_attempt_count == start.resume_attempt_count


def _totals(ledger: Ledger, pg: psycopg.Connection[Any], run_id: str) -> list[TableTotals]:
    return [
        TableTotals(t["table_key"], t["chunks_total"], t["chunks_done"], int(t["rows_copied"]))
        for t in ledger.table_progress(pg, run_id)
    ]


def _copy_chunks(
    cfg: SourceConfig,
    run_id: str,
    todo: list[Chunk],
    lock: SourceLock,
    stop: Stop,
    outcome: RunOutcome,
    notify: Progress,
) -> None:
    """At most ``workers`` chunks in flight; a new one starts only while neither a stop nor a lost lock."""
    local = threading.local()
    workers: list[Worker] = []
    guard_lock = threading.Lock()

    def work(chunk: Chunk) -> ChunkResult:
        if not hasattr(local, "worker"):
            local.worker = Worker(cfg, f"cm_datacopy source={cfg.name} run={run_id}")
            with guard_lock:
                workers.append(local.worker)
        task = ChunkTask(cfg.name, run_id, chunk.table_key, chunk.index)
        return copy_chunk(cfg, task, worker=local.worker, guard=lock.assert_held, stop=stop)

    pending = list(reversed(todo))
    in_flight: dict[Future[ChunkResult], Chunk] = {}
    interrupted = False
    try:
        with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix=f"copy-{cfg.name}") as pool:
            while pending or in_flight:
                if stop.is_set() and not interrupted:
                    interrupted = True
                    notify("stopping", stop.reason)
                    with guard_lock:
                        for worker in workers:
                            worker.interrupt()  # in-flight statements end now, unless committing
                while pending and len(in_flight) < cfg.workers and not stop.is_set() and lock.verify():
                    chunk = pending.pop()
                    in_flight[pool.submit(work, chunk)] = chunk
                    notify("chunk_start", chunk)
                if not in_flight:
                    break
                done, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    chunk = in_flight.pop(future)
                    _record(future, chunk, outcome, notify)
            outcome.lock_lost = lock.lost.is_set()
    finally:
        for worker in workers:
            worker.close()


def _record(future: Future[ChunkResult], chunk: Chunk, outcome: RunOutcome, notify: Progress) -> None:
    try:
        result = future.result()
    except Exception as exc:  # a bug or an interrupt inside a worker thread: reported, never silent
        message, _ = classify(exc)
        outcome.errors.append(f"chunk {chunk.table_key}#{chunk.index}: {message}")
        outcome.chunks_failed += 1
        notify("error", outcome.errors[-1])
        return
    if result.outcome == "failed":
        outcome.chunks_failed += 1
        outcome.errors.append(f"chunk {result.task.name} (attempt {result.attempt}) failed: {result.error}")
    elif result.outcome == "copied":
        outcome.chunks_copied += 1
        outcome.rows += result.rows
    notify("chunk", result)


def _publish_ready_tables(
    cfg: SourceConfig, ledger: Ledger, pg: psycopg.Connection[Any], run_id: str, outcome: RunOutcome, notify: Progress
) -> str | None:
    """Swap in every publish-mode table whose chunks are all done; returns the refusals, if any."""
    open_tables = {c.table_key for c in ledger.chunks(pg, run_id, open_only=True)}
    refusals = []
    for entry in ledger.table_entries(pg, run_id):
        if entry.mode != "publish" or entry.table_key in open_tables or entry.published_at is not None:
            continue
        try:
            result = publish_table(cfg, pg, run_id, entry.table_key)
            outcome.published.append(result)
            notify("published", result)
        except (DatacopyError, psycopg.Error) as exc:
            if isinstance(exc, psycopg.OperationalError) and pg.broken:
                raise  # the connection is gone: the run ends here and a resume publishes
            message, _ = classify(exc, f"publishing {entry.table_key}")
            refusals.append(message)
            outcome.errors.append(message)
            notify("publish_refused", message)
    return "; ".join(refusals) or None


def _finish(cfg: SourceConfig, ledger: Ledger, pg: psycopg.Connection[Any], run_id: str, problem: str | None) -> str:
    """``Ledger.finish_run``; on a fresh connection if the run's own was lost (PostgreSQL restarted, network cut)."""
    if not pg.closed and not pg.broken:
        with contextlib.suppress(psycopg.OperationalError):
            return ledger.finish_run(pg, run_id, problem)
    try:
        with psycopg.connect(**cfg.postgres.connect_kwargs()) as fresh:
            return ledger.finish_run(fresh, run_id, problem)
    except psycopg.Error as exc:
        raise DatacopyError(
            f"could not record the end of run {run_id}: {classify(exc)[0]}; "
            "run again to resume (the chunks copied so far are kept)"
        ) from None
