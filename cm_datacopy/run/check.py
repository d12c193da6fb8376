"""The connection test step: can this source be copied as configured? One line per problem.

Checks: Snowflake login, every table exists and is readable (a ``SELECT ... LIMIT 0`` as the
configured role), PostgreSQL login, and that each target schema can be created or written
(tried inside a transaction that is rolled back, so nothing is written).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.postgres.sql import create_schema_if_absent
from cm_datacopy.redact import outside, redact
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.catalog import describe_table, table_ref
from cm_datacopy.snowflake.sql import sf_ident


def check_source(cfg: SourceConfig) -> list[str]:
    """Problems found (empty: ready to copy); outside text in them is masked where it is quoted."""
    problems: list[str] = []
    problems += _check_snowflake(cfg)
    problems += _check_postgres(cfg)
    return problems


def _check_snowflake(cfg: SourceConfig) -> list[str]:
    problems = []
    try:
        with sf_session.connect(cfg.snowflake, f"cm_datacopy source={cfg.name} step=check") as sf:
            for table in cfg.tables:
                ref = table_ref(cfg.snowflake, table)
                try:
                    describe_table(sf, cfg.snowflake, table)
                    cols = sf_ident(table.chunk_key) if table.chunk_key else "1"
                    sf.execute(f"SELECT {cols} FROM {ref} LIMIT 0")
                except DatacopyError as exc:
                    problems.append(f"snowflake: {exc}")
                except Exception as exc:
                    problems.append(f"snowflake: cannot read {ref}: {_first_line(exc)}")
    except DatacopyError as exc:
        problems.append(f"snowflake: {exc}")
    return problems


def _check_postgres(cfg: SourceConfig) -> list[str]:
    pg_cfg = cfg.postgres
    try:
        conn = psycopg.connect(**pg_cfg.connect_kwargs())
    except DatacopyError as exc:
        return [f"postgres: {exc}"]
    except psycopg.OperationalError as exc:
        text = str(exc)
        if "password authentication failed" in text:
            hint = f"wrong password for user {pg_cfg.user!r} (check {pg_cfg.password_env or 'password_env'})"
        elif "does not exist" in text:
            hint = redact(text.strip().splitlines()[-1])
        else:
            hint = f"cannot reach {pg_cfg.host}:{pg_cfg.port}: {redact(text.strip().splitlines()[-1][:300])}"
        return [f"postgres: {hint}"]
    problems = []
    ledger = Ledger(pg_cfg.ledger_schema)
    with conn:
        try:
            ledger.exists(conn)
        except DatacopyError as exc:
            problems.append(f"postgres: {exc}")
        for schema in sorted({t.target_schema for t in cfg.tables} | {ledger.schema}):
            try:
                with conn.transaction(force_rollback=True), conn.cursor() as cur:
                    create_schema_if_absent(cur, schema)
                    cur.execute(
                        sql.SQL("CREATE TABLE {} (probe integer)").format(
                            sql.Identifier(schema, "cm_datacopy_write_probe")
                        )
                    )
            except psycopg.Error as exc:
                problems.append(
                    f"postgres: user {pg_cfg.user!r} cannot create tables in schema {schema!r}: "
                    f"{_first_line(exc)}; grant CREATE on the schema (or on the database to create it)"
                )
    return problems


def _first_line(exc: Any) -> str:
    return outside(exc, 300)
