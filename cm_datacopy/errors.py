"""The errors a user can act on. Each carries one message that names what to fix."""

from __future__ import annotations


class DatacopyError(Exception):
    """Base of every error cm_datacopy reports to a user instead of a traceback."""

    exit_code = 1


class ConfigError(DatacopyError):
    """The configuration cannot be used; nothing was written."""

    exit_code = 2


class ConnectionCheckError(DatacopyError):
    """A database could not be reached or used as configured."""

    exit_code = 2


class PlanError(DatacopyError):
    """The source and the target do not fit together (types, shapes, chunk keys)."""

    exit_code = 2


class SourceBusyError(DatacopyError):
    """Another run of the same source holds the source's lock."""

    exit_code = 3


class ChunkError(DatacopyError):
    """A chunk failed; its rows were rolled back and the ledger records the error."""


class TruncationRefused(DatacopyError):
    """A guard refused to empty or replace a table that holds rows this run already copied."""
