"""At most one active run per source: a PostgreSQL session advisory lock.

The lock lives on its own connection for the whole run. A killed process loses it with its
connection. A frozen one loses it too: the session has ``idle_session_timeout`` set to
``stale_lock_seconds`` and a heartbeat thread keeps it busy while the process is alive, so a
process that stops answering has its session ended by the server after that long.

Losing the lock must stop the run's writes at once, not at the next heartbeat: every chunk
transaction of the run checks, just before it commits, that the lock's session still holds the
lock (``assert_held``). A process that froze, lost its lock and woke up later therefore commits
nothing more, even while a newer run of the source is copying.
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType
from typing import Any

import psycopg

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ConnectionCheckError, LockLostError, SourceBusyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.redact import redact

_HELD = """
WITH k AS (SELECT hashtextextended(%s, 0) AS key)
SELECT l.pid, a.application_name, a.backend_start, a.state_change, a.state
FROM pg_locks l CROSS JOIN k LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
  AND l.classid = ((k.key >> 32) & 4294967295)::oid AND l.objid = (k.key & 4294967295)::oid
"""


class SourceLock:
    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.key = Ledger(cfg.postgres.ledger_schema).lock_key(f"source:{cfg.name}")
        self.idle_seconds = cfg.stale_lock_seconds
        self.pid: int | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def __enter__(self) -> SourceLock:
        self._acquire()
        return self

    def _acquire(self) -> None:
        pg = self.cfg.postgres
        try:
            conn = psycopg.connect(**pg.connect_kwargs(), autocommit=True)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0].split("failed: ")[-1]
            raise ConnectionCheckError(
                f"cannot connect to PostgreSQL {pg.host}:{pg.port} as {pg.user!r}, database {pg.dbname!r}: "
                f"{redact(reason)}"
            ) from None
        conn.execute("SELECT set_config('idle_session_timeout', %s, false)", (f"{self.idle_seconds}s",))
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)), pg_backend_pid()", (self.key,))
        got, pid = row.fetchone()  # type: ignore[misc]
        if not got:
            holder = conn.execute(_HELD, (self.key,)).fetchone()
            conn.close()
            raise SourceBusyError(self._busy_message(holder))
        self._conn, self.pid = conn, pid
        self._stop.clear()
        self.lost.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.cfg.name}", daemon=True)
        self._thread.start()

    def reacquire(self) -> bool:
        """After a loss (e.g. a cut connection): take the lock again if no other run took it meanwhile.

        True: this run owns the source again and may record its end. False: another run holds it.
        """
        self._release()
        try:
            self._acquire()
        except (SourceBusyError, ConnectionCheckError, psycopg.Error):
            return False
        return True

    def _busy_message(self, holder: tuple[Any, ...] | None) -> str:
        detail = ""
        if holder:
            pid, app, since, last_active, _state = holder
            detail = f" (PostgreSQL backend {pid}, {app or 'unknown client'}, since {since:%Y-%m-%d %H:%M:%S %Z}"
            detail += f", last heartbeat {last_active:%H:%M:%S})" if last_active else ")"
        return (
            f"source {self.cfg.name!r} is already being copied by another run{detail}; wait for it to finish, or "
            f"check 'cm-datacopy status {self.cfg.name}'. If that process is frozen, PostgreSQL ends its lock "
            f"{self.idle_seconds} s after its last heartbeat (stale_lock_seconds)"
        )

    def _heartbeat(self) -> None:
        assert self._conn is not None
        while not self._stop.wait(max(0.5, self.idle_seconds / 6)):
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self.lost.set()
                return

    def verify(self) -> bool:
        """Whether the lock's session is still alive (asked now, not at the last heartbeat): a process
        that was frozen finds out before it starts anything more."""
        if self.lost.is_set() or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.lost.set()
        return not self.lost.is_set()

    def assert_held(self, cur: psycopg.Cursor[Any]) -> None:
        """Inside a chunk's transaction, before it commits: this run still holds the source's lock."""
        cur.execute(_HELD + " AND l.pid = %s", (self.key, self.pid))
        if cur.fetchone() is None:
            self.lost.set()
            raise LockLostError(
                f"run lost the lock of source {self.cfg.name!r} (its session was ended: the process was frozen "
                f"longer than stale_lock_seconds={self.idle_seconds}, or the session was killed); this process "
                "stops and commits nothing more"
            )

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._release()

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
