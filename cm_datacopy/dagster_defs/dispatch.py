"""Where a Dagster step runs its chunks: the seam between the Dagster layer and the compute.

A dispatcher takes the chunk tasks of one step and yields each ``ChunkResult`` as its chunk ends,
with at most ``in_flight`` chunks running at once. Every dispatcher ends in the same
``copy_chunk``: in this process (threads), in an AWS Lambda invocation, or in an ECS task. The
step turns each result into that chunk's materialization and check evaluation, so what Dagster
shows does not depend on where the chunk ran.

A step that stops early closes the dispatcher's iterator (Python's ``close()``, also on an
exception or when Dagster terminates the run): the dispatcher then starts no new chunk and ends
the ones in flight, which roll back unless they are already committing.

The remote kinds live in ``cm_datacopy.dagster_defs.compute`` (``LambdaDispatcher``,
``EcsDispatcher``, both over Dagster Pipes); ``dispatcher_for`` imports them only for sources that
use them, so their client libraries load only where they are needed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, Protocol

from cm_datacopy.chunk import ChunkResult, ChunkTask, Worker, copy_chunk
from cm_datacopy.chunk.copy import Guard
from cm_datacopy.chunk.task import classify, worker_name
from cm_datacopy.config import SourceConfig


class ChunkDispatcher(Protocol):
    def run(self, context: Any, cfg: SourceConfig, tasks: Sequence[ChunkTask], in_flight: int) -> Iterator[ChunkResult]:
        """Run ``tasks``; yield each result as it ends (in any order). Never raises for a failed chunk:
        a failure is a result with ``outcome == "failed"`` and its ``retryable`` flag."""
        ...


class InProcessDispatcher:
    """Chunks in threads of the step's own process, each thread with its own connections (a ``Worker``).

    Every task is queued at once, so a thread that finishes a chunk starts the next one while the
    step is still recording the last result: the step's bookkeeping never idles a worker.
    ``guard`` runs inside each chunk's transaction before it commits (the step passes its source
    lock's check, as ``cm-datacopy run`` does).
    """

    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = guard

    def run(self, context: Any, cfg: SourceConfig, tasks: Sequence[ChunkTask], in_flight: int) -> Iterator[ChunkResult]:
        stop = threading.Event()
        local = threading.local()
        workers: list[Worker] = []
        workers_lock = threading.Lock()

        def work(task: ChunkTask) -> ChunkResult | None:
            if stop.is_set():
                return None  # queued when the step stopped: not started
            if not hasattr(local, "worker"):
                local.worker = Worker(cfg, f"cm_datacopy source={cfg.name} run={task.run_id} dagster")
                with workers_lock:
                    workers.append(local.worker)
            return copy_chunk(cfg, task, worker=local.worker, guard=self.guard, stop=stop)

        pool = ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix=f"chunk-{cfg.name}")
        futures: dict[Future[ChunkResult | None], ChunkTask] = {pool.submit(work, task): task for task in tasks}
        try:
            for future in as_completed(futures):
                result = _result(future, futures[future])
                if result is not None:
                    yield result
        finally:
            stop.set()
            with workers_lock:
                for worker in workers:
                    worker.interrupt()  # statements in flight end now, unless their chunk is committing
            pool.shutdown(wait=True, cancel_futures=True)
            for worker in workers:
                worker.close()


def _result(future: Future[ChunkResult | None], task: ChunkTask) -> ChunkResult | None:
    """The future's result; a bug inside a worker thread becomes a failed result, never a lost chunk."""
    try:
        return future.result()
    except Exception as exc:
        message, retryable = classify(exc)
        return ChunkResult(task, "failed", error=message, retryable=retryable, worker=worker_name())


def dispatcher_for(cfg: SourceConfig, *, guard: Guard | None = None) -> ChunkDispatcher:
    """The dispatcher of a source's ``compute.kind``.

    ``guard`` applies where chunks run in this process; a remote chunk is protected by its attempt
    fence alone (a newer attempt of the chunk makes an older one's commit fail).
    """
    kind = cfg.compute.kind
    if kind == "in_process":
        return InProcessDispatcher(guard)
    if kind == "lambda":
        from cm_datacopy.dagster_defs.compute.lambda_ import LambdaDispatcher

        assert cfg.compute.lambda_ is not None  # validated with the config
        return LambdaDispatcher(cfg.compute.lambda_)
    if kind == "ecs":
        from cm_datacopy.dagster_defs.compute.ecs import EcsDispatcher

        assert cfg.compute.ecs is not None  # validated with the config
        return EcsDispatcher(cfg.compute.ecs)
    raise ValueError(f"unknown compute kind {kind!r}")
