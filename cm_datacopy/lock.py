"""At most one active run per source: a PostgreSQL session advisory lock.

The lock lives on its own connection for the whole run. A killed process loses it with its
connection. A frozen one loses it too: the session has ``idle_session_timeout`` set and a
heartbeat thread keeps it busy while the process is alive, so a process that stops answering
has its session ended by the server after ``idle_seconds``.
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType
from typing import Any

import psycopg

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ConnectionCheckError, SourceBusyError
from cm_datacopy.redact import redact


class SourceLock:
    def __init__(self, cfg: SourceConfig, idle_seconds: int = 60) -> None:
        self.cfg = cfg
        self.idle_seconds = idle_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def __enter__(self) -> SourceLock:
        pg = self.cfg.postgres
        try:
            conn = psycopg.connect(**pg.connect_kwargs(), autocommit=True)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0].split("failed: ")[-1]
            raise ConnectionCheckError(
                redact(
                    f"cannot connect to PostgreSQL {pg.host}:{pg.port} as {pg.user!r}, database {pg.dbname!r}: {reason}"
                )
            ) from None
        conn.execute("SELECT set_config('idle_session_timeout', %s, false)", (f"{self.idle_seconds}s",))
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"cm_datacopy:source:{self.cfg.name}",)
        ).fetchone()
        if not row or not row[0]:
            holder = conn.execute(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.objid = (hashtextextended(%s, 0) & 4294967295)::oid AND l.granted LIMIT 1",
                (f"cm_datacopy:source:{self.cfg.name}",),
            ).fetchone()
            conn.close()
            detail = f" (PostgreSQL backend {holder[0]}, since {holder[3]:%Y-%m-%d %H:%M:%S %Z})" if holder else ""
            raise SourceBusyError(
                f"source {self.cfg.name!r} is already being copied by another run{detail}; "
                "wait for it to finish, or check 'cm-datacopy status'"
            )
        self._conn = conn
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.cfg.name}", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        assert self._conn is not None
        while not self._stop.wait(max(1.0, self.idle_seconds / 4)):
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self.lost.set()
                return

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
