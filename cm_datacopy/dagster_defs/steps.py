"""What every step that touches a source does first: read its config, take its lock.

A copying step holds the source's lock for as long as it copies, as ``cm-datacopy run`` does, so a
CLI run and a Dagster run never copy the same source at once, and each chunk it copies in this
process checks, just before it commits, that the step still holds the lock. Within Dagster, the
source's pool (limit 1) queues its runs, so they do not meet on the lock; a run that finds the lock
held has met a run from outside Dagster, which is copying the source already: its failure is not
resumed automatically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from cm_datacopy.chunk import ChunkTask
from cm_datacopy.config import SourceConfig
from cm_datacopy.dagster_defs.dispatch import dispatcher_for
from cm_datacopy.dagster_defs.reporting import ChunkFailure, ChunkReporter, error_failure, step_failure
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.errors import DatacopyError, SourceBusyError
from cm_datacopy.postgres.lock import SourceLock


def pool_name(source: str) -> str:
    """The source's concurrency pool: one copying run of the source at a time (``workers`` chunks inside it)."""
    return f"cm_datacopy_{source}"


def ensure_pool_limit(instance: Any, source: str) -> None:
    """Give the source's pool the instance's default limit now, if it has no limit yet.

    The run queue gives a pool its default limit the first time it sees the pool queued, but it
    checks the limits it read before that, in the same pass: every run of the pool queued by then
    starts at once. A backfill of a new source's tables queues a run per table together, so without
    this they would meet on the source's lock and all but one fail. Planning (``plan_<source>``,
    ``copy_<source>``) comes before any backfill of the chunks it registers, so it sets the limit here.
    A limit someone set, or no default limit at all, is left as it is.
    """
    storage = instance.event_log_storage
    pool = pool_name(source)
    if not instance.global_op_concurrency_default_limit or not storage.supports_global_concurrency_limits:
        return
    if pool not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(pool)


def load_source(datacopy: DatacopyConfig, name: str, **overrides: Any) -> SourceConfig:
    """The source's config as the file says now, with a run's overrides (validated by the run config's
    own schema); a file that does not validate fails the step, finally: someone must fix it."""
    try:
        cfg = datacopy.source(name)
    except DatacopyError as exc:
        raise step_failure(f"config: {exc}", retryable=False) from None
    changes = {k: v for k, v in overrides.items() if v is not None}
    return cfg.model_copy(update=changes) if changes else cfg


@contextlib.contextmanager
def source_lock(cfg: SourceConfig) -> Iterator[SourceLock]:
    try:
        lock = SourceLock(cfg).__enter__()
    except SourceBusyError as exc:
        raise step_failure(f"{exc} (not resumed automatically: that run copies the source)", retryable=False) from None
    except DatacopyError as exc:
        raise error_failure(exc, f"taking the lock of source {cfg.name}") from None
    try:
        yield lock
    finally:
        lock.__exit__(None, None, None)


def copy_tasks(
    context: Any, cfg: SourceConfig, tasks: Sequence[ChunkTask], reporter: ChunkReporter, lock: SourceLock
) -> Iterator[Any]:
    """Copy ``tasks`` through the source's dispatcher (``workers`` in flight), yielding each chunk's events
    as it ends. Stops starting chunks once the lock is lost (the ones in flight roll back)."""
    if not tasks:
        return
    dispatcher = dispatcher_for(cfg, guard=lock.assert_held)
    with contextlib.closing(iter(dispatcher.run(context, cfg, tasks, cfg.workers))) as results:
        for result in results:
            yield from reporter.events(result)
            if lock.lost.is_set():
                reporter.failures.append(
                    ChunkFailure("(the rest)", f"the step lost the lock of source {cfg.name}; it stopped", True)
                )
                return
