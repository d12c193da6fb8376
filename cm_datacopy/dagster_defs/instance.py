"""A Dagster home whose storage is a PostgreSQL database (schema ``dagster``), for ``ui`` and the tests,
and the storage connections our Dagster processes keep open.

The shipped ``dagster.yaml`` reads its connection from ``DAGSTER_PG_*`` variables. An embedded
PostgreSQL listens on a Unix socket only, and dagster-postgres puts ``hostname`` into a URL, where a
directory path cannot go: for a socket the home's ``dagster.yaml`` gets libpq's ``host`` parameter
(the socket directory) under ``params``, which overrides the URL's host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

SHIPPED_INSTANCE = Path(__file__).resolve().parent.parent.parent / "dagster.yaml"
SCHEMA = "dagster"


def prepare_home(home: Path, pg: dict[str, Any], shipped: Path = SHIPPED_INSTANCE) -> dict[str, str]:
    """Write ``home/dagster.yaml`` and create the schema; returns the environment Dagster needs."""
    with psycopg.connect(**pg, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    raw = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    host = str(pg.get("host") or "localhost")
    if host.startswith("/"):
        raw["storage"]["postgres"]["postgres_db"]["params"]["host"] = host
        host = "localhost"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return {
        "DAGSTER_HOME": str(home.resolve()),
        "DAGSTER_PG_USER": str(pg.get("user") or "postgres"),
        "DAGSTER_PG_PASSWORD": str(pg.get("password") or ""),
        "DAGSTER_PG_HOST": host,
        "DAGSTER_PG_DB": str(pg["dbname"]),
        "DAGSTER_PG_PORT": str(pg.get("port") or 5432),
    }


def reuse_storage_connections(instance: Any) -> None:
    """For the rest of this process, Dagster's storage statements reuse pooled connections.

    Outside its webserver, Dagster's PostgreSQL storage opens a new connection for every statement: in
    a copying step, which records two events per chunk, about seven connections a chunk; in the daemon,
    whose loops run statements all the time, 10–30 new sessions a second. On a busy machine that churn
    cost the copy up to a fifth of its speed (``benchmarks/dagster_vs_cli.py``). The webserver's own
    setting, applied here, keeps one connection open and up to 20 more while threads overlap (its
    default); no statement timeout, the same as without it.
    """
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=20)
