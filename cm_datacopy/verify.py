"""Does the target hold what the source holds? Row counts per copied chunk, both sides.

A chunk's rows are counted in Snowflake (at the run's snapshot, the same read the copy did) and in
PostgreSQL (the same key range in the target). Only chunks the ledger marks done are compared: an
open chunk is expected to differ. Per-chunk checksums will extend ``_compare_chunk`` later, so each
comparison stays one small function.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy import ledger, source
from cm_datacopy.chunks import Chunk
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import DatacopyError


@dataclass(frozen=True)
class TableVerification:
    """The outcome for one table of one run; ``mismatches`` names each chunk that differs."""

    table_key: str
    run_id: str
    chunks_checked: int
    chunks_open: int
    source_rows: int
    target_rows: int
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def verify_table(
    cfg: SourceConfig, run_id: str, table_key: str, chunk_indexes: Collection[int] | None = None
) -> TableVerification:
    """Compare source and target row counts of the done chunks of ``table_key`` in ``run_id``
    (all of them, or those in ``chunk_indexes``: the Dagster check verifies the chunk it follows)."""
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        run = ledger.get_run(pg, run_id)
        entry = next((t for t in ledger.table_entries(pg, run_id) if t.table_key == table_key), None)
        if run is None or entry is None:
            raise DatacopyError(f"the ledger has no table {table_key!r} in run {run_id}")
        every = [
            c
            for c in ledger.chunks(pg, run_id)
            if c.table_key == table_key and (chunk_indexes is None or c.index in chunk_indexes)
        ]
        wanted = {c.index for c in every}
        open_ = {c.index for c in ledger.chunks(pg, run_id, open_only=True) if c.table_key == table_key} & wanted
        done = [c for c in every if c.index not in open_]
        source_total = target_total = 0
        mismatches: list[str] = []
        with source.connect(cfg.snowflake) as sf:
            for chunk in done:
                src = source.count_rows(sf, entry.source_table, chunk, run.snapshot_at)
                dst = _target_rows(pg, entry, chunk)
                source_total += src
                target_total += dst
                if problem := _compare_chunk(chunk, src, dst):
                    mismatches.append(problem)
    return TableVerification(table_key, run_id, len(done), len(open_), source_total, target_total, mismatches)


def _target_rows(pg: psycopg.Connection[Any], entry: ledger.TableEntry, chunk: Chunk) -> int:
    key_column = entry.target_column(chunk.key_column) if chunk.key_column else ""
    where, params = chunk.postgres_where(key_column)
    statement = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        sql.Identifier(entry.target_schema, entry.target_table), where
    )
    row = pg.execute(statement, params).fetchone()
    pg.commit()
    return int(row[0]) if row else 0


def _compare_chunk(chunk: Chunk, source_rows: int, target_rows: int) -> str | None:
    if source_rows == target_rows:
        return None
    return f"chunk {chunk.index:05d} ({chunk.describe()}): Snowflake {source_rows} rows, PostgreSQL {target_rows} rows"
