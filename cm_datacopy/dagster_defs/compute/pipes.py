"""What the Lambda and ECS dispatchers share: chunks in flight in threads, one Pipes session each, the
attempt fence, and the reading of a chunk's reports.

One Pipes session per chunk, each with a NEW client and a NEW message reader: the readers keep their
session's state on themselves (the log-tail reader its handler, the S3 reader its chunk counter, the
CloudWatch reader its stream), so a reader shared by two chunks, at once or one after the other, mixes
up or drops their reports. The boto3 clients are thread-safe and shared.

A chunk's outcome is the ``ChunkResult`` its worker reports (a custom Pipes message). Results are read
with ``implicit_materializations=False``: a report that never arrived is a failed, retryable chunk, not
a materialization without figures.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from dagster import AssetCheckResult, MaterializeResult, PipesClientCompletedInvocation

from cm_datacopy.chunk import ChunkResult, ChunkTask
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.redact import redact
from cm_datacopy.workers.protocol import CHECK_NAME, RESULT_MESSAGE, ChunkRequest


class StepContext:
    """The step's context as the Pipes clients see it, without one switch.

    ``open_pipes_session`` calls ``context.set_requires_typed_event_stream()`` in an asset step: from then
    on the step must yield a MaterializeResult for each of its assets and an AssetCheckResult for each
    check, or it fails. In a step over a range of chunk partitions that single MaterializeResult would
    mark every partition of the range materialized with one set of figures, the failed chunks included.
    The step reports each chunk itself instead (one materialization and check evaluation per partition,
    from its ChunkResult), so this proxy ignores that call and hands everything else to the real context.

    This leans on ``open_pipes_session`` only using its context through attributes (true in Dagster
    1.13); the dispatcher tests run real Pipes sessions through it inside a Dagster step, so a Dagster
    release that changes this fails them.
    """

    def __init__(self, context: Any) -> None:
        # An asset step's context wraps an op context that Pipes can use without deprecated attributes.
        self._context = getattr(context, "op_execution_context", context)

    def set_requires_typed_event_stream(self, *, error_message: str | None = None) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def failed(task: ChunkTask, error: str, *, retryable: bool, worker: str | None = None) -> ChunkResult:
    return ChunkResult(task, "failed", error=redact(error), retryable=retryable, worker=worker)


def asset_key_for(context: Any, cfg: SourceConfig, task: ChunkTask) -> str | None:
    """The asset the worker reports its chunk for (Pipes' escaped form), or None outside an asset step.

    A step of one asset reports for it; a step of several assets for the chunk's table asset."""
    if not context.has_assets_def:
        return None
    keys = context.selected_asset_keys
    if len(keys) == 1:
        return next(iter(keys)).to_escaped_user_string()
    from cm_datacopy.dagster_defs.partitions import table_asset_key

    key = table_asset_key(cfg.name, cfg.table(task.table_key))
    return key.to_escaped_user_string() if key in keys else None


class PipesDispatcher:
    """Runs a step's chunks, ``in_flight`` at a time, each in its own thread and Pipes session.

    Subclasses implement ``invoke`` (one chunk, blocking) and may implement ``cancel`` (stop chunks still
    running when the step ends early), then wait ``cancel_grace_seconds`` for their sessions to close.
    The threads are daemons: a run worker that is told to stop does not wait for a 15-minute invocation
    it cannot cancel (the chunk rolls back at its deadline, and its attempt fence keeps it from
    committing over a newer attempt).
    """

    kind = "remote"
    cancel_grace_seconds = 0.0

    def invoke(self, context: Any, cfg: SourceConfig, request: ChunkRequest) -> ChunkResult:
        raise NotImplementedError

    def cancel(self, context: Any) -> None:
        """Stop the chunks still running (the step is ending early)."""

    def request_for(self, context: Any, cfg: SourceConfig, task: ChunkTask) -> ChunkRequest:
        remote = cfg.compute.remote
        assert remote is not None, "a remote dispatcher needs compute settings for its kind"
        return ChunkRequest(
            task=task,
            config_fingerprint=cfg.fingerprint(),
            asset_key=asset_key_for(context, cfg, task),
            deadline_margin_seconds=remote.deadline_margin_seconds,
        )

    def run(self, context: Any, cfg: SourceConfig, tasks: Sequence[ChunkTask], in_flight: int) -> Iterator[ChunkResult]:
        step = StepContext(context)
        results: queue.Queue[ChunkResult] = queue.Queue()
        pending = list(tasks)
        running = 0
        threads: list[threading.Thread] = []
        ledger = Ledger(cfg.postgres.ledger_schema)
        pg: psycopg.Connection[Any] | None = None
        try:
            while pending or running:
                while pending and running < max(1, in_flight):
                    task = pending.pop(0)
                    try:
                        if pg is None or pg.closed or pg.broken:
                            pg = psycopg.connect(**cfg.postgres.connect_kwargs())
                        task = fence(pg, ledger, task)
                        request = self.request_for(context, cfg, task)
                    except (psycopg.Error, DatacopyError) as exc:
                        retryable = isinstance(exc, psycopg.OperationalError) or getattr(exc, "retryable", False)
                        results.put(failed(task, f"cannot dispatch chunk {task.name}: {exc}", retryable=retryable))
                    else:
                        thread = threading.Thread(
                            target=self._one, args=(step, cfg, request, results), name=f"chunk-{task.name}", daemon=True
                        )
                        thread.start()
                        threads.append(thread)
                    running += 1
                result = results.get()
                running -= 1
                yield result
        finally:
            if pg is not None:
                pg.close()
            if running:
                self.cancel(context)
                grace_until = time.monotonic() + self.cancel_grace_seconds
                for thread in threads:
                    thread.join(max(0.0, grace_until - time.monotonic()))

    def _one(self, context: Any, cfg: SourceConfig, request: ChunkRequest, results: queue.Queue[ChunkResult]) -> None:
        try:
            result = self.invoke(context, cfg, request)
        except Exception as exc:  # a failure of the dispatch itself: the other chunks go on
            result = failed(
                request.task,
                f"{self.kind} dispatch of chunk {request.task.name} failed: {type(exc).__name__}: {exc}",
                retryable=False,
            )
        results.put(result)


def fence(pg: psycopg.Connection[Any], ledger: Ledger, task: ChunkTask) -> ChunkTask:
    """The task with its chunk's attempt count now: the worker claims an attempt only if none was claimed
    since, so a request delivered twice (an invoke re-sent, a task started twice) copies once."""
    state = ledger.chunk_state(pg, task.run_id, task.table_key, task.chunk_index)
    return dataclasses.replace(task, fence=state.attempts)


def reported_result(
    request: ChunkRequest, invocation: PipesClientCompletedInvocation, where: str, lost_hint: str
) -> ChunkResult:
    """The chunk's ChunkResult as its worker reported it, checked against the session's other reports.

    ``where``: the worker, for errors; ``lost_hint``: what to do when no report arrived.
    """
    task = request.task
    messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("kind") == RESULT_MESSAGE]
    if not messages:
        return failed(task, f"no report of chunk {task.name} reached Dagster from {where}; {lost_hint}", retryable=True)
    try:
        result = ChunkResult.from_json(messages[-1]["result"])
    except (KeyError, TypeError, ValueError) as exc:
        return failed(task, f"{where} sent an unreadable report for chunk {task.name}: {exc}", retryable=False)
    if (result.task.run_id, result.task.table_key, result.task.chunk_index) != (
        task.run_id,
        task.table_key,
        task.chunk_index,
    ):
        return failed(task, f"{where} reported chunk {result.task.name} instead of {task.name}", retryable=False)
    if not (result.ok and request.asset_key):
        return result
    reports = invocation.get_results(implicit_materializations=False)
    materializations = [r for r in reports if isinstance(r, MaterializeResult)]
    checks = [r for r in reports if isinstance(r, AssetCheckResult) and r.check_name == CHECK_NAME]
    if not materializations or not checks:
        return failed(
            task,
            f"{where} reported chunk {task.name} {result.outcome} but its materialization or check was lost",
            retryable=True,
        )
    rows = materializations[-1].metadata.get("rows") if materializations[-1].metadata else None
    if getattr(rows, "value", None) != result.rows or checks[-1].passed != result.verified:
        return failed(task, f"{where} sent reports of chunk {task.name} that disagree", retryable=False)
    return result
