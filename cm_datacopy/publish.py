"""Publish mode: chunks load a shadow table; one transaction swaps its rows into the target.

Readers never see a half-loaded or empty table: the swap deletes the target's rows and inserts the
shadow's in one transaction, so under MVCC readers keep seeing the old rows until it commits and
then see all the new ones. The target stays the same table object, so its indexes, grants,
comments, triggers and dependent views keep working (a rename swap would leave views pointing at
the old table).

Truncation protection, two independent layers before the target's rows are replaced:
the ledger (every chunk of this table done and verified in this run) and the target itself (the
new row count is not zero and not below ``publish_min_fraction`` of the target's current rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import TruncationRefused
from cm_datacopy.ledger import TableEntry
from cm_datacopy.target import create_table_sql

_MAX_IDENT = 63


def shadow_name(target_table: str, run_id: str) -> str:
    """A shadow per target and run, within PostgreSQL's 63-byte identifier limit."""
    tag = "__cmdc_" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
    head = target_table.encode()[: _MAX_IDENT - len(tag)].decode(errors="ignore")
    return head + tag


def ensure_shadows(pg: psycopg.Connection[Any], entries: list[TableEntry], published: set[str]) -> None:
    """The run's shadows, shaped by the type plan (no indexes: loads fast); never emptied once created.

    Called when a run starts and when it resumes, so a crash between storing the plan and creating
    a shadow heals itself.
    """
    with pg.transaction(), pg.cursor() as cur:
        for entry in entries:
            if entry.mode == "publish" and entry.table_key not in published:
                cur.execute(create_table_sql(entry.load_schema, entry.load_table, entry.columns))


def drop_stale_shadows(pg: psycopg.Connection[Any], source: str, keep_run: str) -> None:
    """Shadows of this source's older unpublished runs: they will never be published now."""
    with pg.transaction(), pg.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT t.load_schema, t.load_table FROM migration_status.migration_table_status t "
            "JOIN migration_status.migration_runs r USING (run_id) WHERE r.source = %s AND t.run_id <> %s "
            "AND t.mode = 'publish' AND t.published_at IS NULL",
            (source, keep_run),
        )
        for schema, table in cur.fetchall():
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))


@dataclass(frozen=True)
class PublishResult:
    table_key: str
    published: bool
    rows: int = 0
    replaced_rows: int = 0


def publish_table(cfg: SourceConfig, pg: psycopg.Connection[Any], run_id: str, table_key: str) -> PublishResult:
    """Swap the shadow's rows into the target if both layers agree; idempotent."""
    table_cfg = cfg.table(table_key)
    with pg.transaction(), pg.cursor() as cur:
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{cfg.lock_timeout_seconds}s")))
        cur.execute(
            "SELECT mode, published_at, published_rows, target_schema, target_table, load_schema, load_table, "
            "chunks_total, columns FROM migration_status.migration_table_status "
            "WHERE run_id = %s AND table_key = %s FOR UPDATE",
            (run_id, table_key),
        )
        mode, published_at, published_rows, t_schema, t_table, l_schema, l_table, total, columns = cur.fetchone()
        if mode != "publish":
            return PublishResult(table_key, False)
        if published_at is not None:
            return PublishResult(table_key, True, published_rows or 0)
        # Layer 1, the ledger: every chunk of this table is done and its checksums agree.
        cur.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'), "
            "count(*) FILTER (WHERE status = 'done' AND source_checksum IS DISTINCT FROM target_checksum), "
            "coalesce(sum(rows_copied) FILTER (WHERE status = 'done'), 0) "
            "FROM migration_status.migration_chunk_status WHERE run_id = %s AND table_key = %s",
            (run_id, table_key),
        )
        done, unverified, ledger_rows = cur.fetchone()
        if done != total or unverified:
            raise TruncationRefused(
                f"refusing to publish {table_key}: the ledger shows {done}/{total} chunks done"
                + (f", {unverified} with checksums that differ" if unverified else "")
            )
        target = sql.Identifier(t_schema, t_table)
        shadow = sql.Identifier(l_schema, l_table)
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target))
        cur.execute(sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})").format(shadow, target))
        new_rows, old_rows = cur.fetchone()
        # Layer 2, the target: the shadow holds what the ledger says, and is not far smaller than the target.
        if new_rows != ledger_rows:
            raise TruncationRefused(
                f"refusing to publish {table_key}: the shadow holds {new_rows} rows, the ledger {ledger_rows}"
            )
        if old_rows > 0 and (new_rows == 0 or new_rows < table_cfg.publish_min_fraction * old_rows):
            raise TruncationRefused(
                f"refusing to publish {table_key}: it would replace {old_rows} rows with {new_rows} "
                f"(below publish_min_fraction {table_cfg.publish_min_fraction:g}); check the source, then run "
                "again with --no-resume to reload it, or lower publish_min_fraction for this table"
            )
        names = sql.SQL(", ").join(sql.Identifier(c["target_name"]) for c in columns)
        cur.execute(sql.SQL("DELETE FROM {}").format(target))
        cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target, names, names, shadow))
        cur.execute(sql.SQL("DROP TABLE {}").format(shadow))
        cur.execute(
            "UPDATE migration_status.migration_table_status SET published_at = now(), published_rows = %s, "
            "replaced_rows = %s WHERE run_id = %s AND table_key = %s",
            (new_rows, old_rows, run_id, table_key),
        )
    return PublishResult(table_key, True, new_rows, old_rows)
