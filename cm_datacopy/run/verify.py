"""Re-verify a run without copying: per chunk, count and checksum on both sides; narrow a mismatch.

A chunk whose checksums differ is bisected by its key (like data-diff/reladiff): each half is
checksummed on both sides and only differing halves are split again, down to a few rows, whose
row hashes are compared to name the keys that are missing, extra or different.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy import checksum
from cm_datacopy.checksum import Checksum
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger, RunEntry, TableEntry
from cm_datacopy.postgres.sql import BoundIdentifier, chunk_where
from cm_datacopy.ranges import Chunk, encode_bound
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.snowflake.sql import sf_ident

LEAF_ROWS = 64
SAMPLE_KEYS = 10
MAX_DEPTH = 40


@dataclass(frozen=True)
class ChunkVerification:
    table_key: str
    chunk_index: int
    source: Checksum
    target: Checksum
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.source == self.target

    def describe(self) -> str:
        text = f"chunk {self.table_key}#{self.chunk_index:05d}: Snowflake {self.source}; PostgreSQL {self.target}"
        return text + ("; " + "; ".join(self.differences) if self.differences else "")


@dataclass(frozen=True)
class TableVerification:
    """One table of one run: its done chunks checked now; open chunks are expected to differ."""

    table_key: str
    relation: str
    chunks: list[ChunkVerification]
    chunks_open: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chunks)

    @property
    def source_rows(self) -> int:
        return sum(c.source.rows for c in self.chunks)

    @property
    def target_rows(self) -> int:
        return sum(c.target.rows for c in self.chunks)

    @property
    def mismatches(self) -> list[str]:
        return [c.describe() for c in self.chunks if not c.ok]


def checked_relation(entry: TableEntry) -> tuple[str, str]:
    """Where the run's rows are now: the target once published (or in place), else the shadow."""
    if entry.mode == "publish" and entry.published_at is None:
        return entry.load_schema, entry.load_table
    return entry.target_schema, entry.target_table


def verify_table(
    cfg: SourceConfig,
    run_id: str,
    table_key: str,
    *,
    chunk_indexes: list[int] | None = None,
    narrow: bool = True,
) -> TableVerification:
    """Checksum the run's done chunks of one table on both sides now (all of them, or those given:
    the Dagster check verifies the chunk it follows)."""
    ledger = Ledger(cfg.postgres.ledger_schema)
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(psycopg.connect(**cfg.postgres.connect_kwargs()))
        sf = stack.enter_context(
            sf_session.connect(cfg.snowflake, f"cm_datacopy source={cfg.name} run={run_id} step=verify")
        )
        run = ledger.get_run(pg, run_id)
        entry = next((e for e in ledger.table_entries(pg, run_id) if e.table_key == table_key), None)
        if run is None or entry is None:
            raise DatacopyError(f"the ledger has no table {table_key} in run {run_id}")
        schema, table = checked_relation(entry)
        sides = _Sides(cfg, sf, pg, run, entry, sql.Identifier(schema, table))
        wanted = set(chunk_indexes) if chunk_indexes is not None else None
        open_chunks = {c.index for c in ledger.chunks(pg, run_id, table_key=table_key, open_only=True)}
        results, skipped = [], 0
        for chunk in ledger.chunks(pg, run_id, table_key=table_key):
            if wanted is not None and chunk.index not in wanted:
                continue
            if chunk.index in open_chunks:
                skipped += 1
                continue
            results.append(sides.verify_chunk(chunk, narrow))
        return TableVerification(table_key, f"{schema}.{table}", results, skipped)


def verify_run(cfg: SourceConfig, run_id: str) -> list[TableVerification]:
    with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        keys = [entry.table_key for entry in Ledger(cfg.postgres.ledger_schema).table_entries(pg, run_id)]
    return [verify_table(cfg, run_id, key) for key in keys]


@dataclass(frozen=True)
class _Sides:
    """One table of one run, open on both databases: what every comparison below needs."""

    cfg: SourceConfig
    sf: sf_session.Session
    pg: psycopg.Connection[Any]
    run: RunEntry
    entry: TableEntry
    relation: sql.Identifier

    @property
    def nul_replacement(self) -> str | None:
        return self.cfg.nul_replacement if self.cfg.nul_bytes == "replace" else None

    def pg_where(self, chunk: Chunk) -> tuple[sql.Composable, list[Any]]:
        return chunk_where(chunk, self.entry.target_column(chunk.key_column) if chunk.key_column else None)

    def scan(self, chunk: Chunk) -> Scan:
        return Scan(self.entry.source_table, self.run.snapshot_at, chunk)

    def checksums(self, chunk: Chunk) -> tuple[Checksum, Checksum]:
        src = checksum.snowflake_checksum(self.sf, self.scan(chunk), self.entry.columns, self.nul_replacement)
        where, params = self.pg_where(chunk)
        with self.pg.cursor() as cur:
            dst = checksum.postgres_checksum(cur, self.relation, self.entry.columns, where, params)
        self.pg.commit()
        return src, dst

    def verify_chunk(self, chunk: Chunk, narrow: bool) -> ChunkVerification:
        src, dst = self.checksums(chunk)
        differences = self.bisect(chunk, src, dst, 0)[:SAMPLE_KEYS] if src != dst and narrow else []
        return ChunkVerification(chunk.table_key, chunk.index, src, dst, differences)

    def bisect(self, chunk: Chunk, src: Checksum, dst: Checksum, depth: int) -> list[str]:
        """Keys whose rows differ inside ``chunk``, halving the key range while it holds many rows."""
        if src == dst:
            return []
        if chunk.key_column is None or max(src.rows, dst.rows) <= LEAF_ROWS or depth >= MAX_DEPTH:
            return self.row_differences(chunk)
        middle = self.middle_key(chunk, max(src.rows, 1))
        if middle is None or middle == chunk.lower:
            return self.row_differences(chunk)
        found: list[str] = []
        for half in (replace(chunk, upper=middle), replace(chunk, lower=middle, include_nulls=False)):
            found += self.bisect(half, *self.checksums(half), depth + 1)
            if len(found) >= SAMPLE_KEYS:
                break
        return found

    def middle_key(self, chunk: Chunk, rows: int) -> str | None:
        """The median key of the range in Snowflake, as a stored bound."""
        assert chunk.key_column is not None and chunk.key_kind is not None
        key = sf_ident(chunk.key_column)
        from_where, params = self.scan(chunk).from_where(f"{key} IS NOT NULL")
        row = self.sf.execute(
            f"SELECT {key} {from_where} ORDER BY {key} LIMIT 1 OFFSET {int(rows // 2)}", params
        ).fetchone()
        return None if row is None else encode_bound(chunk.key_kind, row[0])

    def row_differences(self, chunk: Chunk) -> list[str]:
        """Compare the range row by row (few rows): keys missing, extra or different in PostgreSQL."""
        key_source = chunk.key_column
        from_where, params = self.scan(chunk).from_where()
        cur = self.sf.execute(
            f"SELECT {sf_ident(key_source) if key_source else 'NULL'}, "
            f"MD5({checksum.snowflake_row_text(self.entry.columns, self.nul_replacement)}) {from_where}",
            params,
        )
        source_rows = collections.Counter((_key_text(chunk, k), h) for k, h in cur.fetchall())
        pg_where, pg_params = self.pg_where(chunk)
        key_pg = BoundIdentifier(self.entry.target_column(key_source)) if key_source else sql.SQL("NULL")
        statement = sql.SQL("SELECT {}, md5({}) FROM {} WHERE {}").format(
            key_pg,
            checksum.postgres_row_text(self.entry.columns),
            BoundIdentifier(*self.relation._obj),
            pg_where,
        )
        target_rows = collections.Counter(
            (_key_text(chunk, k), h) for k, h in self.pg.execute(statement, pg_params).fetchall()
        )
        self.pg.commit()
        missing, extra = source_rows - target_rows, target_rows - source_rows
        missing_keys, extra_keys = {k for k, _ in missing}, {k for k, _ in extra}
        name = self.entry.target_column(key_source) if key_source else "row"
        out = [f"{name}={k} differs" for k in sorted(missing_keys & extra_keys)]
        out += [f"{name}={k} missing in PostgreSQL" for k in sorted(missing_keys - extra_keys)]
        out += [f"{name}={k} extra in PostgreSQL" for k in sorted(extra_keys - missing_keys)]
        return out


def _key_text(chunk: Chunk, value: Any) -> str:
    if value is None or chunk.key_kind is None:
        return "NULL"
    return encode_bound(chunk.key_kind, value)
