"""Test helpers: real PostgreSQL databases, Snowflake stand-in databases, configs and CLI runs.

Every test gets its own PostgreSQL database (created on the shared server and dropped after) and
its own Snowflake database on the stand-in, so tests never see each other's rows or ledgers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cm_datacopy.config import Config, load_config
from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy.standin.snowflake import StandinSnowflake

PG_ENV = "CM_DATACOPY_TEST_POSTGRES"
DEFAULT_PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
SNOWFLAKE_PASSWORD_ENV = "CM_DATACOPY_TEST_SNOWFLAKE_PASSWORD"
REPO = Path(__file__).resolve().parent.parent


def admin_conninfo() -> dict[str, Any]:
    return conninfo_to_dict(os.environ.get(PG_ENV, DEFAULT_PG))


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "cmdc_t") -> Iterator[dict[str, Any]]:
    """A new, empty database on the test server; yields psycopg connect kwargs for it."""
    admin = admin_conninfo()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield {**admin, "dbname": name}
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def sf_connect(sf: StandinSnowflake, database: str | None = None) -> Any:
    import snowflake.connector

    extra: dict[str, Any] = {"paramstyle": "qmark"}
    if database:
        extra["database"] = database
    return snowflake.connector.connect(**sf.connect_kwargs(**extra))


def sf_session(sf: StandinSnowflake, database: str) -> Any:
    """Our ``Session`` over a plain connection to the stand-in, in ``database``.PUBLIC (close ``.conn``)."""
    from cm_datacopy.config import SnowflakeConfig
    from cm_datacopy.snowflake.session import Session

    raw = sf_connect(sf, database)
    raw.cursor().execute(f"USE SCHEMA {sf_ident(database)}.{sf_ident('PUBLIC')}")
    cfg = SnowflakeConfig(
        account=sf.account,
        user=sf.user,
        password_env=SNOWFLAKE_PASSWORD_ENV,
        database=database,
        host=sf.host,
        port=sf.port,
        protocol="http",
    )
    return Session(raw, cfg)


def new_sf_database(sf: StandinSnowflake, prefix: str = "T") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8].upper()}"
    with contextlib.closing(sf_connect(sf)) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE DATABASE {sf_ident(name)}")
        cur.execute(f"CREATE SCHEMA {sf_ident(name)}.{sf_ident('PUBLIC')}")
    return name


def sf_execute(sf: StandinSnowflake, database: str, *statements: str) -> list[Any]:
    with contextlib.closing(sf_connect(sf, database)) as conn:
        cur = conn.cursor()
        result: list[Any] = []
        for statement in statements:
            cur.execute(statement)
            with contextlib.suppress(Exception):
                result = cur.fetchall()
        return result


def source_body(
    sf: StandinSnowflake, sf_database: str, pg: dict[str, Any], tables: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    """One source's config, pointing at the stand-ins."""
    return {
        "snowflake": {
            "account": sf.account,
            "user": sf.user,
            "password_env": SNOWFLAKE_PASSWORD_ENV,
            "database": sf_database,
            "schema": "PUBLIC",
            "host": sf.host,
            "port": sf.port,
            "protocol": "http",
            "login_timeout_seconds": 10,
        },
        "postgres": {k: pg[k] for k in ("host", "port", "dbname", "user") if k in pg},
        "tables": tables,
        **overrides,
    }


def write_config(
    path: Path,
    sf: StandinSnowflake,
    sf_database: str,
    pg: dict[str, Any],
    tables: list[dict[str, Any]],
    source: str = "analytics",
    **overrides: Any,
) -> Path:
    """A one-source (or more, via ``extra_sources``) config pointing at the stand-ins."""
    extra_sources = overrides.pop("extra_sources", {})
    body = source_body(sf, sf_database, pg, tables, **overrides)
    path.write_text(yaml.safe_dump({"sources": {source: body, **extra_sources}}, sort_keys=False))
    return path


def load(path: Path) -> Config:
    return load_config(path)


def cli(config: Path, *args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def cli_popen(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def pg_rows(pg: dict[str, Any], query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(**pg) as conn:
        return conn.execute(query, params).fetchall()


def pg_table_rows(pg: dict[str, Any], schema: str, table: str, order_by: str) -> list[tuple[Any, ...]]:
    return pg_rows(
        pg,
        sql.SQL("SELECT * FROM {} ORDER BY {} NULLS FIRST").format(
            sql.Identifier(schema, table), sql.Identifier(order_by)
        ),
    )
