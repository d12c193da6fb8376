"""The errors a user can act on. Each carries one message that names what to fix, an exit code,
and whether trying the same work again can succeed (``retryable``) or cannot until someone
changes something (final). Dagster's retries and the auto-resume sensor act on that flag."""

from __future__ import annotations


class DatacopyError(Exception):
    """Base of every error cm_datacopy reports to a user instead of a traceback."""

    exit_code = 1
    retryable = False


class ConfigError(DatacopyError):
    """The configuration cannot be used; nothing was written."""

    exit_code = 2


class ConnectionCheckError(DatacopyError):
    """A database could not be reached or used as configured."""

    exit_code = 2
    retryable = True


class PlanError(DatacopyError):
    """The source and the target do not fit together (types, shapes, chunk keys)."""

    exit_code = 2


class SourceBusyError(DatacopyError):
    """Another run of the same source holds the source's lock."""

    exit_code = 3
    retryable = True


class LockLostError(DatacopyError):
    """This run lost its source lock (frozen past ``stale_lock_seconds``, or its session was ended)."""

    exit_code = 3
    retryable = True


class StopRequested(DatacopyError):
    """The user asked the run to stop (Ctrl-C, SIGTERM): no new chunk starts, the run stays resumable."""

    exit_code = 130
    retryable = True


class ChunkError(DatacopyError):
    """A chunk failed; its rows were rolled back and the ledger records the error."""


class DeadlineExceeded(ChunkError):
    """The chunk would not commit before its runtime's deadline (e.g. a Lambda's timeout); rolled back."""

    retryable = True


class TruncationRefused(DatacopyError):
    """A guard refused to empty or replace a table that holds rows this run already copied."""
