"""Publish mode: chunks load a shadow table; one transaction swaps it in for the target.

Readers never see a half-loaded or empty table: the swap is one transaction, so under MVCC readers
keep seeing the old rows until it commits and then see all the new ones. Two ways, chosen per
publish (``postgres/swap.py`` says when renaming is safe) and recorded in the ledger
(``publish_method``), the log and the CLI's line:

* **rename** (nothing outside the target refers to it): the shadow gets the target's indexes (built
  once, in bulk), constraints, NOT NULLs, grants and comments; the target is dropped and the shadow
  renamed to its name. No row is written twice and no dead rows are left behind. The drop waits for
  running readers at most ``RENAME_LOCK_WAIT_SECONDS`` (new readers queue behind it meanwhile); if
  they hold on longer, the rename is rolled back to a savepoint and the rows are swapped instead.
* **rows** (a view, foreign key, trigger, policy, default, another owner…: the target's identity
  matters): the target's rows are deleted and the shadow's inserted, so the target stays the same
  table and everything attached to it keeps working; it costs writing every row a second time.

The shadow carries an index on the chunk key while it loads (each chunk's checksum reads its own
range, never the whole shadow); a rename drops it: the published table has the target's indexes.

Truncation protection, two independent layers before the target's rows are replaced:
the ledger (every chunk of this table done and verified in this run) and the target itself (the
new row count is not zero and not below ``publish_min_fraction`` of the target's current rows).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import TruncationRefused
from cm_datacopy.postgres import swap
from cm_datacopy.postgres.ledger import Ledger, TableEntry
from cm_datacopy.postgres.target import create_table_sql

log = logging.getLogger(__name__)

_MAX_IDENT = 63
RENAME, ROWS = "rename", "rows"
# How long a rename waits for the target's readers (new readers queue behind the wait) before the
# publish swaps rows instead, which readers do not block.
RENAME_LOCK_WAIT_SECONDS = 2


def shadow_name(target_table: str, run_id: str) -> str:
    """A shadow per target and run, within PostgreSQL's 63-byte identifier limit."""
    tag = "__cmdc_" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
    head = target_table.encode()[: _MAX_IDENT - len(tag)].decode(errors="ignore")
    return head + tag


def shadow_key_index(shadow_table: str) -> str:
    """The shadow's chunk-key index: unique per shadow, within the identifier limit."""
    return "cmdc_key_" + hashlib.sha256(shadow_table.encode()).hexdigest()[:16]


def ensure_shadows(pg: psycopg.Connection[Any], entries: list[TableEntry], ledger: Ledger) -> None:
    """The run's unpublished shadows, shaped by the type plan, with an index on the chunk key only
    (each chunk's checksum reads its own range); never emptied once created. Called when a run starts
    and when it resumes, so a crash between storing the plan and creating a shadow heals itself."""
    with pg.transaction(), pg.cursor() as cur:
        keys = ledger.key_columns(cur, entries[0].run_id) if entries else {}
        for entry in entries:
            if entry.mode == "publish" and entry.published_at is None:
                cur.execute(create_table_sql(entry.load_schema, entry.load_table, entry.columns))
                if entry.table_key in keys:
                    cur.execute(
                        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                            sql.Identifier(shadow_key_index(entry.load_table)),
                            sql.Identifier(entry.load_schema, entry.load_table),
                            sql.Identifier(entry.target_column(keys[entry.table_key])),
                        )
                    )


def drop_stale_shadows(pg: psycopg.Connection[Any], ledger: Ledger, source: str, keep_run: str) -> None:
    """Shadows of this source's older unpublished runs: superseded, they will never be published."""
    with pg.transaction(), pg.cursor() as cur:
        for schema, table in ledger.unpublished_shadows(cur, source, keep_run):
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))


@dataclass(frozen=True)
class PublishResult:
    table_key: str
    published: bool
    rows: int = 0
    replaced_rows: int = 0
    method: str | None = None  # RENAME, or "rows: <why renaming was not safe>"

    @property
    def how(self) -> str:
        """How the swap was made, in words for a log line or the CLI."""
        if self.method is None:
            return ""
        if self.method == RENAME:
            return "the shadow renamed over the target"
        return "rows replaced in the target (renaming is not safe: " + self.method[len(ROWS) + 2 :] + ")"


def publish_table(cfg: SourceConfig, pg: psycopg.Connection[Any], run_id: str, table_key: str) -> PublishResult:
    """Swap the shadow's rows into the target if both layers agree; idempotent."""
    ledger = Ledger(cfg.postgres.ledger_schema)
    table_cfg = cfg.table(table_key)
    with pg.transaction(), pg.cursor() as cur:
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{cfg.lock_timeout_seconds}s")))
        state = ledger.lock_for_publish(cur, run_id, table_key)
        if state.mode != "publish":
            return PublishResult(table_key, False)
        if state.published_at is not None:
            return PublishResult(table_key, True, state.published_rows or 0, method=state.publish_method)
        ledger.hold_open_run(cur, run_id)  # a replaced run never swaps its (dropped) shadow in
        # Layer 1, the ledger: every chunk of this table is done and its checksums agree.
        if state.chunks_done != state.chunks_total or state.chunks_unverified:
            raise TruncationRefused(
                f"refusing to publish {table_key}: the ledger shows "
                f"{state.chunks_done}/{state.chunks_total} chunks done"
                + (f", {state.chunks_unverified} with checksums that differ" if state.chunks_unverified else "")
            )
        target = sql.Identifier(state.target_schema, state.target_table)
        shadow = sql.Identifier(state.load_schema, state.load_table)
        cur.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(target))
        cur.execute(sql.SQL("SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})").format(shadow, target))
        new_rows, old_rows = cur.fetchone()  # type: ignore[misc]
        # Layer 2, the target: the shadow holds what the ledger says, and is not far smaller than the target.
        if new_rows != state.rows:
            raise TruncationRefused(
                f"refusing to publish {table_key}: the shadow holds {new_rows} rows, the ledger {state.rows}; "
                "the shadow was changed outside cm_datacopy: run again with --no-resume to reload it"
            )
        if old_rows > 0 and (new_rows == 0 or new_rows < table_cfg.publish_min_fraction * old_rows):
            raise TruncationRefused(
                f"refusing to publish {table_key}: it would replace {old_rows} rows with {new_rows} "
                f"(below publish_min_fraction {table_cfg.publish_min_fraction:g}). If the source really shrank, "
                f"lower publish_min_fraction for this table and run again: the copied chunks are kept and only "
                "the swap runs (the target is untouched until then)"
            )
        rel = swap.relations(cur, state.target_schema, state.target_table, state.load_schema, state.load_table)
        obstacles = swap.rename_obstacles(cur, rel)
        if not obstacles:
            wait = min(cfg.lock_timeout_seconds, RENAME_LOCK_WAIT_SECONDS)
            try:
                with pg.transaction():  # a savepoint: a rename that cannot get its lock leaves no trace
                    swap.swap_by_rename(cur, rel, [shadow_key_index(state.load_table)], wait)
            except psycopg.errors.LockNotAvailable:
                obstacles = [f"readers kept the table busy for {wait} s"]
        if not obstacles:
            method = RENAME
        else:
            method = f"{ROWS}: {'; '.join(obstacles)}"
            names = sql.SQL(", ").join(sql.Identifier(c["target_name"]) for c in state.columns)
            cur.execute(sql.SQL("DELETE FROM {}").format(target))
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target, names, names, shadow))
            cur.execute(sql.SQL("DROP TABLE {}").format(shadow))
        ledger.mark_published(cur, run_id, table_key, new_rows, old_rows, method)
    result = PublishResult(table_key, True, new_rows, old_rows, method)
    log.info("published %s: %s rows replaced %s, %s", table_key, new_rows, old_rows, result.how)
    return result
