"""The Snowflake side: connect, describe a table, find chunk boundaries, stream a chunk as Arrow.

Every statement quotes identifiers (``sf_ident``) and binds values; nothing from the config is
formatted into SQL as a value.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from cm_datacopy.chunks import Chunk
from cm_datacopy.config import SnowflakeConfig, TableConfig
from cm_datacopy.errors import ConnectionCheckError, PlanError
from cm_datacopy.sql import sf_ident, sf_table
from cm_datacopy.typeplan import ColumnPlan, plan_columns

log = logging.getLogger(__name__)


def describe_connect_error(exc: Exception, cfg: SnowflakeConfig) -> str:
    """One actionable line for a failed login; never the password."""
    text = str(exc)
    where = f"{cfg.host}:{cfg.port}" if cfg.host else f"account {cfg.account}"
    if "390100" in text or "Incorrect username or password" in text:
        return f"Snowflake refused user {cfg.user!r}: wrong user or password (check {cfg.password_env or 'the key'})"
    if "JWT" in text or "private key" in text.lower():
        return f"Snowflake refused key-pair login for {cfg.user!r}: check the key file and its passphrase"
    return f"cannot reach Snowflake at {where}: {type(exc).__name__}: {text.splitlines()[0][:300]}"


@contextlib.contextmanager
def connect(cfg: SnowflakeConfig) -> Iterator[Any]:
    """An open connector connection; closed on every exit (dagster-snowflake's is not on errors)."""
    import snowflake.connector

    kwargs = cfg.connect_kwargs()
    try:
        conn = snowflake.connector.connect(**kwargs)
    except Exception as exc:  # the connector raises many kinds; each becomes one line
        raise ConnectionCheckError(describe_connect_error(exc, cfg)) from None
    finally:
        kwargs.clear()
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def table_ref(cfg: SnowflakeConfig, table: TableConfig) -> str:
    return sf_table(cfg.database, table.source_schema or cfg.schema_, table.source)


def describe_table(conn: Any, cfg: SnowflakeConfig, table: TableConfig, *, postgis: bool = False) -> list[ColumnPlan]:
    """The table's columns from INFORMATION_SCHEMA, mapped to PostgreSQL types."""
    schema = table.source_schema or cfg.schema_
    cur = conn.cursor()
    cur.execute(
        f"SELECT column_name, data_type, numeric_precision, numeric_scale, character_maximum_length, is_nullable "
        f"FROM {sf_ident(cfg.database)}.INFORMATION_SCHEMA.COLUMNS "
        f"WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        (schema, table.source),
    )
    rows = cur.fetchall()
    if not rows:
        raise PlanError(
            f"Snowflake table {cfg.database}.{schema}.{table.source} does not exist or is not visible to "
            f"role {cfg.role or '(default)'}; check the name (exact case) and grants"
        )
    columns = plan_columns(rows, postgis)
    if table.chunk_key is not None:
        key = next((c for c in columns if c.source_name == table.chunk_key), None)
        if key is None:
            raise PlanError(
                f"chunk_key {table.chunk_key!r} is not a column of {table.source}; "
                f"columns: {', '.join(c.source_name for c in columns)}"
            )
        if key.key_kind is None:
            raise PlanError(
                f"chunk_key {table.chunk_key!r} of {table.source} is {key.snowflake_type}: use a number, date or "
                "timestamp column, or remove chunk_key to copy the table as one chunk"
            )
    return columns


def at_clause(snapshot_at: dt.datetime | None) -> tuple[str, list[Any]]:
    """Time Travel: every chunk of a run reads the table as it was when the run started."""
    if snapshot_at is None:
        return "", []
    return " AT(TIMESTAMP => CAST(? AS TIMESTAMP_TZ))", [snapshot_at.isoformat(sep=" ")]


def supports_time_travel(conn: Any, ref: str, at: dt.datetime) -> bool:
    """Whether this table can be read AT a point in time (the stand-in cannot; retention may be 0)."""
    clause, params = at_clause(at)
    try:
        conn.cursor().execute(f"SELECT 1 FROM {ref}{clause} LIMIT 0", params)
        return True
    except Exception as exc:
        log.warning("Time Travel unavailable for %s (%s); chunks read the live table", ref, str(exc)[:200])
        return False


def chunk_boundaries(
    conn: Any, ref: str, key_column: str, chunk_size: int, snapshot_at: dt.datetime | None
) -> list[Any]:
    """Every chunk_size-th distinct key value, in order: exact boundaries for ~chunk_size rows per chunk."""
    key = sf_ident(key_column)
    at, params = at_clause(snapshot_at)
    cur = conn.cursor()
    cur.execute(
        f"SELECT DISTINCT k FROM (SELECT {key} AS k, ROW_NUMBER() OVER (ORDER BY {key}) AS rn "
        f"FROM {ref}{at} WHERE {key} IS NOT NULL) WHERE MOD(rn - 1, ?) = 0 AND rn > 1 ORDER BY k",
        [*params, chunk_size],
    )
    return [row[0] for row in cur.fetchall()]


def select_chunk_sql(
    ref: str, columns: list[ColumnPlan], chunk: Chunk, snapshot_at: dt.datetime | None
) -> tuple[str, list[Any]]:
    """The statement that reads one chunk: every planned column, the chunk's range."""
    cols = ", ".join(c.select_sql() for c in columns)
    at, at_params = at_clause(snapshot_at)
    where, params = chunk.snowflake_where()
    return f"SELECT {cols} FROM {ref}{at} WHERE {where}", [*at_params, *params]


def read_chunk(
    conn: Any, ref: str, columns: list[ColumnPlan], chunk: Chunk, snapshot_at: dt.datetime | None
) -> Iterator[pa.RecordBatch]:
    """Run the chunk's query now; the batches stream as they are consumed."""
    statement, params = select_chunk_sql(ref, columns, chunk, snapshot_at)
    cur = conn.cursor()
    cur.execute(statement, params)
    return _batches(cur)


def _batches(cur: Any) -> Iterator[pa.RecordBatch]:
    for table in cur.fetch_arrow_batches():
        yield from table.to_batches()


def count_rows(conn: Any, ref: str, chunk: Chunk | None, snapshot_at: dt.datetime | None) -> int:
    at, params = at_clause(snapshot_at)
    where, where_params = chunk.snowflake_where() if chunk else ("TRUE", [])
    cur = conn.cursor()
    cur.execute(f"SELECT COUNT(*) FROM {ref}{at} WHERE {where}", [*params, *where_params])
    return int(cur.fetchone()[0])
