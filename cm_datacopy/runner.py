"""Run a source to the end from one process: start or resume, copy every open chunk, finish.

This is what ``cm-datacopy run`` does; the Dagster layer does the same steps as separate runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cm_datacopy import ledger
from cm_datacopy.chunks import Chunk
from cm_datacopy.config import SourceConfig
from cm_datacopy.copy import ChunkResult, Connections, copy_chunk, describe_error
from cm_datacopy.errors import ChunkError, DatacopyError
from cm_datacopy.lock import SourceLock
from cm_datacopy.planning import RunStart, start_or_resume
from cm_datacopy.publish import publish_table


@dataclass
class RunOutcome:
    start: RunStart
    status: str = "running"
    chunks_total: int = 0
    chunks_copied: int = 0
    rows: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.start.run_id

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


Progress = Callable[[str, ChunkResult | ChunkError | RunStart | list[Chunk]], None]


def run_source(cfg: SourceConfig, *, no_resume: bool | None = None, progress: Progress | None = None) -> RunOutcome:
    """Copy the source's open chunks with ``cfg.workers`` threads; the run's status is in the ledger."""
    notify = progress or (lambda _kind, _item: None)
    with SourceLock(cfg) as lock, psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        start = start_or_resume(cfg, pg, no_resume=no_resume)
        notify("start", start)
        outcome = RunOutcome(start)
        todo = ledger.chunks(pg, start.run_id, open_only=True)
        outcome.chunks_total = len(todo)
        notify("plan", todo)
        local = threading.local()
        opened: list[Connections] = []

        def work(chunk: Chunk) -> ChunkResult:
            if lock.lost.is_set():
                raise DatacopyError("lost the source lock (the session was ended); stopping")
            if not hasattr(local, "conns"):
                local.conns = Connections(cfg)
                opened.append(local.conns)
            return copy_chunk(cfg, start.run_id, chunk.table_key, chunk.index, connections=local.conns)

        began = time.monotonic()
        publish_error: str | None = None
        try:
            with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix=f"copy-{cfg.name}") as pool:
                futures = [pool.submit(work, chunk) for chunk in todo]
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except ChunkError as exc:
                        outcome.errors.append(str(exc))
                        notify("failed", exc)
                        continue
                    except DatacopyError as exc:
                        outcome.errors.append(str(exc))
                        continue
                    except psycopg.Error as exc:  # the ledger unreachable before the chunk's attempt began
                        outcome.errors.append(f"chunk {describe_error(exc)}")
                        continue
                    outcome.chunks_copied += result.outcome == "copied"
                    outcome.rows += result.rows
                    notify("chunk", result)
            publish_error = _publish_ready_tables(cfg, pg, start.run_id, outcome, notify)
        finally:
            for conns in opened:
                conns.close()
            outcome.seconds = time.monotonic() - began
            outcome.status = _finish(cfg, pg, start.run_id, publish_error)
        return outcome


def _publish_ready_tables(
    cfg: SourceConfig, pg: psycopg.Connection[Any], run_id: str, outcome: RunOutcome, notify: Progress
) -> str | None:
    """Swap in every publish-mode table whose chunks are all done; returns the refusals, if any."""
    open_tables = {c.table_key for c in ledger.chunks(pg, run_id, open_only=True)}
    refusals = []
    for entry in ledger.table_entries(pg, run_id):
        if entry.mode != "publish" or entry.table_key in open_tables:
            continue
        try:
            result = publish_table(cfg, pg, run_id, entry.table_key)
            notify("published", result)
        except (DatacopyError, psycopg.Error) as exc:
            if isinstance(exc, psycopg.OperationalError) and pg.broken:
                raise  # the connection is gone: the run ends here and a resume publishes
            message = (
                describe_error(exc)
                if isinstance(exc, DatacopyError)
                else f"could not publish {entry.table_key}: {describe_error(exc)}"
            )
            refusals.append(message)
            outcome.errors.append(message)
            notify("publish_refused", message)
    return "; ".join(refusals) or None


def _finish(cfg: SourceConfig, pg: psycopg.Connection[Any], run_id: str, publish_error: str | None) -> str:
    """``ledger.finish_run``; on a fresh connection if the run's own was lost (PostgreSQL restarted, network cut)."""
    if not pg.closed:
        with contextlib.suppress(psycopg.OperationalError):
            return ledger.finish_run(pg, run_id, publish_error)
    try:
        with psycopg.connect(**cfg.postgres.connect_kwargs()) as fresh:
            return ledger.finish_run(fresh, run_id, publish_error)
    except psycopg.Error as exc:
        raise DatacopyError(
            f"could not record the end of run {run_id}: {describe_error(exc)}; "
            "run again to resume (the chunks copied so far are kept)"
        ) from None
