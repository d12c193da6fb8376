"""The chunk task contract: what crosses a process boundary (a thread, a Lambda invocation, an ECS task).

A ``ChunkTask`` names one chunk of one run and the limits it runs under; a ``ChunkResult`` says what
happened, with the figures the ledger recorded and, for a failure, whether another attempt can
succeed (``retryable``) or cannot until someone changes something (final). Both are plain JSON.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import psycopg

from cm_datacopy.errors import DatacopyError
from cm_datacopy.redact import outside

Outcome = Literal["copied", "already_done", "superseded", "failed"]


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to copy.

    ``fence``: the chunk's attempt count when the task was made. The worker claims the next attempt
    only if no other attempt was claimed since, so a task delivered twice (an invoke re-sent by a
    client) copies once. None: claim unconditionally (a local worker that owns the source's lock).
    ``deadline``: epoch seconds by which the chunk must have committed or rolled back (a Lambda's
    timeout); checked between batches and before the checksum and the commit.
    """

    source: str
    run_id: str
    table_key: str
    chunk_index: int
    fence: int | None = None
    deadline: float | None = None

    @property
    def name(self) -> str:
        return f"{self.table_key}#{self.chunk_index:05d}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkTask:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ChunkResult:
    """What one attempt at a chunk did (for ``already_done``: the ledger's figures of the attempt that copied it)."""

    task: ChunkTask
    outcome: Outcome
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    attempt: int = 0
    source_rows: int | None = None
    source_checksum: int | None = None
    target_checksum: int | None = None
    rows_replaced: int = 0
    nul_replaced: int = 0
    error: str | None = None
    retryable: bool | None = None
    worker: str | None = None

    @property
    def ok(self) -> bool:
        """The chunk is done (by this attempt or an earlier one)."""
        return self.outcome in ("copied", "already_done")

    @property
    def verified(self) -> bool:
        return self.source_checksum is not None and self.source_checksum == self.target_checksum

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # Checksums are 60-bit sums that can pass 2**63: JSON numbers are fine in Python, text is safer elsewhere.
        for key in ("source_checksum", "target_checksum"):
            if data[key] is not None:
                data[key] = str(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["task"] = ChunkTask.from_json(values["task"])
        for key in ("source_checksum", "target_checksum"):
            if values.get(key) is not None:
                values[key] = int(values[key])
        return cls(**values)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def classify(exc: BaseException, step: str | None = None) -> tuple[str, bool]:
    """One line for the ledger and the user (the outside text in it masked), and whether a retry can succeed.

    ``step``: what the chunk was doing, so a lock timeout says where it waited.
    """
    where = f" while {step}" if step else ""
    if isinstance(exc, DatacopyError):
        return str(exc), exc.retryable
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return (
            f"waited longer than lock_timeout_seconds for a PostgreSQL lock{where}: another session holds it "
            "(see pg_locks / pg_stat_activity); retry after it is released",
            True,
        )
    if isinstance(exc, (psycopg.errors.QueryCanceled, psycopg.errors.IdleInTransactionSessionTimeout)):
        return f"PostgreSQL ended the chunk's transaction after its timeout{where}: {_first_line(exc)}", True
    if isinstance(exc, psycopg.errors.DataError):
        return f"a value does not fit its PostgreSQL column{where}: {_first_line(exc)}", False
    if isinstance(exc, (psycopg.errors.IntegrityError, psycopg.errors.RaiseException)):
        return f"PostgreSQL refused the rows{where}: {_first_line(exc)}", False
    if isinstance(exc, psycopg.OperationalError):
        return f"lost the PostgreSQL connection{where}: {_first_line(exc)}", True
    if isinstance(exc, psycopg.Error):
        return f"{type(exc).__name__}{where}: {_first_line(exc)}", False
    module = type(exc).__module__
    if module.startswith("snowflake."):
        from cm_datacopy.snowflake.catalog import describe_read_error
        from cm_datacopy.snowflake.session import is_retryable_error

        if known := describe_read_error(exc):
            return f"Snowflake{where}: {known}", False
        return f"Snowflake{where}: {_first_line(exc)}", is_retryable_error(exc)
    if isinstance(exc, (OSError, TimeoutError)):
        return f"{type(exc).__name__}{where}: {_first_line(exc)}", True
    return f"{type(exc).__name__}{where}: {_first_line(exc)}", False


def _first_line(exc: BaseException) -> str:
    return outside(exc)
