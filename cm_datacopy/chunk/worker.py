"""A worker's connections: one PostgreSQL connection and two Snowflake sessions (rows, checksum),
opened on first use and reused across the chunks the worker copies."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ConnectionCheckError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.redact import outside
from cm_datacopy.snowflake import session as sf_session


class Worker:
    def __init__(self, cfg: SourceConfig, query_tag: str | None = None) -> None:
        self.cfg = cfg
        self.ledger = Ledger(cfg.postgres.ledger_schema)
        self.query_tag = query_tag or f"cm_datacopy source={cfg.name}"
        self._pg: psycopg.Connection[Any] | None = None
        self._sessions: dict[str, tuple[contextlib.ExitStack, sf_session.Session]] = {}
        self._checksums: ThreadPoolExecutor | None = None
        self.committing = False  # set by copy_chunk while its transaction commits: not interrupted then

    def pg(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            try:
                self._pg = psycopg.connect(**self.cfg.postgres.connect_kwargs())
            except psycopg.OperationalError as exc:
                raise ConnectionCheckError(
                    f"cannot connect to PostgreSQL {self.cfg.postgres.host}:{self.cfg.postgres.port}: {outside(exc)}"
                ) from None
        return self._pg

    def snowflake(self, role: str = "rows") -> sf_session.Session:
        """The session for a chunk's rows (``rows``), or a second one for its checksum (``checksum``)."""
        held = self._sessions.get(role)
        if held is None or held[1].is_closed():
            if held is not None:
                held[0].close()
            stack = contextlib.ExitStack()
            session = stack.enter_context(sf_session.connect(self.cfg.snowflake, self.query_tag))
            self._sessions[role] = held = (stack, session)
        return held[1]

    def checksum_thread(self) -> ThreadPoolExecutor:
        """One thread per worker computes Snowflake's checksum of a chunk while its rows stream."""
        if self._checksums is None:
            self._checksums = ThreadPoolExecutor(1, thread_name_prefix="checksum")
        return self._checksums

    def interrupt(self) -> None:
        """Cancel the PostgreSQL statement in flight (a COPY, a checksum) so its chunk rolls back now;
        a chunk that is committing is left to finish. Safe to call from another thread."""
        pg = self._pg
        if pg is not None and not pg.closed and not self.committing:
            with contextlib.suppress(Exception):
                pg.cancel_safe(timeout=5)

    def reset(self) -> None:
        """Drop connections after a failure; the next use opens fresh ones."""
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
        self._pg = None
        for stack, _ in self._sessions.values():
            with contextlib.suppress(Exception):
                stack.close()
        self._sessions.clear()

    def close(self) -> None:
        self.reset()
        if self._checksums is not None:
            self._checksums.shutdown(wait=False, cancel_futures=True)
            self._checksums = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
