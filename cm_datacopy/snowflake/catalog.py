"""What Snowflake knows about a table: its columns (mapped to PostgreSQL types) and its Time Travel."""

from __future__ import annotations

import datetime as dt
import logging

from cm_datacopy.config import SnowflakeConfig, TableConfig
from cm_datacopy.errors import PlanError
from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident, sf_table
from cm_datacopy.typeplan import ColumnPlan, plan_columns

log = logging.getLogger(__name__)

# "Time travel data is not available for table …": retention 0 or expired, or the table was
# replaced (CREATE OR REPLACE, e.g. by dbt) after the requested moment.
TIME_TRAVEL_UNAVAILABLE = 707


def table_ref(cfg: SnowflakeConfig, table: TableConfig) -> str:
    return sf_table(cfg.database, table.source_schema or cfg.schema_, table.source)


def describe_table(
    session: Session, cfg: SnowflakeConfig, table: TableConfig, *, postgis: bool = False
) -> list[ColumnPlan]:
    """The table's columns from INFORMATION_SCHEMA, mapped to PostgreSQL types."""
    schema = table.source_schema or cfg.schema_
    rows = session.execute(
        f"SELECT column_name, data_type, numeric_precision, numeric_scale, character_maximum_length, is_nullable "
        f"FROM {sf_ident(cfg.database)}.INFORMATION_SCHEMA.COLUMNS "
        f"WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        (schema, table.source),
    ).fetchall()
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


def is_time_travel_unavailable(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == TIME_TRAVEL_UNAVAILABLE


def snapshot_time(session: Session, refs: list[str]) -> dt.datetime | None:
    """The run's read point: now, if every table can be read AT it; None on the stand-in.

    The stand-in cannot read at a point in time at all: it is told apart by what the server is,
    not by an error, so a network or permission failure is never mistaken for "no Time Travel".
    On Snowflake a table without Time Travel (retention 0) stops the plan with what to do.
    """
    if session.dialect == "standin":
        log.warning("the Snowflake stand-in has no Time Travel: chunks read the live tables (snapshot_at NULL)")
        return None
    now = session.execute("SELECT CURRENT_TIMESTAMP()").fetchone()[0]
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    for ref in refs:
        from_where, params = Scan(ref, now).from_where()
        try:
            session.execute(f"SELECT 1 {from_where} LIMIT 0", params)
        except Exception as exc:
            if is_time_travel_unavailable(exc):
                raise PlanError(
                    f"{ref} cannot be read at a point in time (Time Travel unavailable: retention 0?); raise its "
                    "DATA_RETENTION_TIME_IN_DAYS above the run's duration, or set time_travel: false for this source "
                    "(chunks then read the live table, and rows written meanwhile fail verification)"
                ) from None
            raise
    return now


def describe_read_error(exc: BaseException) -> str | None:
    """A user's message for a Snowflake error while reading a run's chunk, where one exists (such an error is final)."""
    if is_time_travel_unavailable(exc):
        return (
            "source replaced since run start: Snowflake has no Time Travel data for the table at the run's start "
            "(error 000707: the table was re-created, e.g. by CREATE OR REPLACE, or its retention expired); "
            "this run cannot finish, run with --no-resume to start a new one"
        )
    return None
