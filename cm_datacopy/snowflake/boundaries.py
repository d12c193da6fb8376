"""Chunk boundaries: key values that cut a table into ranges of about ``chunk_size`` rows."""

from __future__ import annotations

from typing import Any

from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident


def chunk_boundaries(session: Session, scan: Scan, key_column: str, chunk_size: int) -> list[Any]:
    """Every chunk_size-th key value, in order: exact boundaries for ~chunk_size rows per chunk."""
    key = sf_ident(key_column)
    from_where, params = scan.from_where(f"{key} IS NOT NULL")
    rows = session.execute(
        f"SELECT DISTINCT k FROM (SELECT {key} AS k, ROW_NUMBER() OVER (ORDER BY {key}) AS rn "
        f"{from_where}) WHERE MOD(rn - 1, ?) = 0 AND rn > 1 ORDER BY k",
        [*params, chunk_size],
    ).fetchall()
    return [row[0] for row in rows]
