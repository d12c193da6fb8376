"""The ledger: schema ``migration_status`` in the target PostgreSQL.

It records runs, their tables (with the column plan and where chunks load), and every chunk
(bounds, status, rows, attempts, last error). A chunk is marked done in the same transaction that
writes its rows, so the ledger and the target never disagree.

The DDL is versioned: ``schema_version`` holds the applied versions; new versions append to
``_MIGRATIONS`` and run once, under a transaction-level advisory lock so concurrent first uses
do not race.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cm_datacopy.checksum import Checksum
from cm_datacopy.chunks import Chunk
from cm_datacopy.sql import create_schema_if_absent
from cm_datacopy.typeplan import ColumnPlan

SCHEMA = "migration_status"

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE migration_status.migration_runs (
        run_id               text PRIMARY KEY,
        source               text NOT NULL,
        status               text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
        started_at           timestamptz NOT NULL DEFAULT now(),
        finished_at          timestamptz,
        resume_attempt_count integer NOT NULL DEFAULT 0,
        config_fingerprint   text NOT NULL,
        snapshot_at          timestamptz,
        no_resume            boolean NOT NULL DEFAULT false,
        last_error           text
    );
    CREATE INDEX migration_runs_source_started ON migration_status.migration_runs (source, started_at DESC);

    CREATE TABLE migration_status.migration_table_status (
        run_id        text NOT NULL REFERENCES migration_status.migration_runs ON DELETE CASCADE,
        table_key     text NOT NULL,
        source_table  text NOT NULL,
        target_schema text NOT NULL,
        target_table  text NOT NULL,
        load_schema   text NOT NULL,
        load_table    text NOT NULL,
        columns       jsonb NOT NULL,
        status        text NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed')),
        chunks_total  integer NOT NULL,
        rows_copied   bigint NOT NULL DEFAULT 0,
        source_rows   bigint,
        finished_at   timestamptz,
        PRIMARY KEY (run_id, table_key)
    );

    CREATE TABLE migration_status.migration_chunk_status (
        run_id           text NOT NULL,
        table_key        text NOT NULL,
        chunk_index      integer NOT NULL,
        key_column       text,
        key_kind         text,
        lower_bound      text,
        upper_bound      text,
        include_nulls    boolean NOT NULL DEFAULT false,
        status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'running', 'done', 'failed')),
        rows_copied      bigint,
        bytes_copied     bigint,
        attempts         integer NOT NULL DEFAULT 0,
        duration_seconds double precision,
        last_error       text,
        worker           text,
        started_at       timestamptz,
        finished_at      timestamptz,
        PRIMARY KEY (run_id, table_key, chunk_index),
        FOREIGN KEY (run_id, table_key) REFERENCES migration_status.migration_table_status ON DELETE CASCADE
    );
    CREATE INDEX migration_chunk_status_open ON migration_status.migration_chunk_status (run_id, status);
    """,
    # 2: per-chunk verification on both sides, NUL replacement counts, publish mode.
    """
    ALTER TABLE migration_status.migration_chunk_status
        ADD COLUMN source_rows     bigint,
        ADD COLUMN source_checksum numeric(38,0),
        ADD COLUMN target_checksum numeric(38,0),
        ADD COLUMN nul_replaced    bigint NOT NULL DEFAULT 0;
    ALTER TABLE migration_status.migration_table_status
        ADD COLUMN mode           text NOT NULL DEFAULT 'in_place' CHECK (mode IN ('in_place', 'publish')),
        ADD COLUMN published_at   timestamptz,
        ADD COLUMN published_rows bigint,
        ADD COLUMN replaced_rows  bigint;
    """,
]


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create or upgrade the ledger; idempotent and safe when many workers start at once."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('cm_datacopy:ledger-ddl', 0))")
        create_schema_if_absent(cur, SCHEMA)
        cur.execute(
            "CREATE TABLE IF NOT EXISTS migration_status.schema_version "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT coalesce(max(version), 0) FROM migration_status.schema_version")
        current = cur.fetchone()[0]  # type: ignore[index]
        for version, ddl in enumerate(_MIGRATIONS, start=1):
            if version > current:
                cur.execute(ddl)
                cur.execute("INSERT INTO migration_status.schema_version (version) VALUES (%s)", (version,))


@dataclass(frozen=True)
class TableEntry:
    """A table's row in a run: what the chunk workers need to copy any of its chunks."""

    run_id: str
    table_key: str
    source_table: str
    target_schema: str
    target_table: str
    load_schema: str
    load_table: str
    columns: list[ColumnPlan]
    mode: str = "in_place"

    def target_column(self, source_name: str) -> str:
        return next(c.target_name for c in self.columns if c.source_name == source_name)


@dataclass(frozen=True)
class RunEntry:
    run_id: str
    source: str
    status: str
    started_at: dt.datetime
    resume_attempt_count: int
    config_fingerprint: str
    snapshot_at: dt.datetime | None
    no_resume: bool


def new_run_id(source: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{source}-{now}-{uuid.uuid4().hex[:6]}"


def _run(row: dict[str, Any]) -> RunEntry:
    return RunEntry(**{k: row[k] for k in RunEntry.__dataclass_fields__})


def get_run(conn: psycopg.Connection[Any], run_id: str) -> RunEntry | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM migration_status.migration_runs WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
    conn.commit()
    return _run(row) if row else None


def latest_run(conn: psycopg.Connection[Any], source: str) -> RunEntry | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_runs WHERE source = %s ORDER BY started_at DESC LIMIT 1",
            (source,),
        )
        row = cur.fetchone()
    conn.commit()
    return _run(row) if row else None


def find_run_by_suffix(conn: psycopg.Connection[Any], source: str, suffix: str) -> RunEntry | None:
    """The source's run whose id ends with ``-suffix`` (the random tail of ``new_run_id``).

    The Dagster layer puts this short tag in partition keys instead of the whole run id.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_runs WHERE source = %s AND right(run_id, %s) = %s "
            "ORDER BY started_at DESC LIMIT 2",
            (source, len(suffix) + 1, f"-{suffix}"),
        )
        rows = cur.fetchall()
    conn.commit()
    if len(rows) > 1:
        from cm_datacopy.errors import DatacopyError

        raise DatacopyError(f"two runs of {source!r} end with {suffix!r}: {rows[0]['run_id']}, {rows[1]['run_id']}")
    return _run(rows[0]) if rows else None


def find_resumable(conn: psycopg.Connection[Any], source: str, max_age_hours: float) -> RunEntry | None:
    """The newest unfinished run of the source started within ``max_age_hours``."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_runs WHERE source = %s AND status <> 'completed' "
            "AND started_at > now() - make_interval(secs => %s) ORDER BY started_at DESC LIMIT 1",
            (source, max_age_hours * 3600),
        )
        row = cur.fetchone()
    conn.commit()
    return _run(row) if row else None


def create_run(
    conn: psycopg.Connection[Any],
    source: str,
    fingerprint: str,
    snapshot_at: dt.datetime | None,
    no_resume: bool,
    tables: list[tuple[TableEntry, list[Chunk]]],
) -> str:
    """Store a new run with its whole chunk plan, in one transaction."""
    run_id = tables[0][0].run_id if tables else new_run_id(source)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "INSERT INTO migration_status.migration_runs (run_id, source, status, config_fingerprint, snapshot_at, "
            "no_resume) VALUES (%s, %s, 'running', %s, %s, %s)",
            (run_id, source, fingerprint, snapshot_at, no_resume),
        )
        for entry, chunks in tables:
            cur.execute(
                "INSERT INTO migration_status.migration_table_status (run_id, table_key, source_table, target_schema, "
                "target_table, load_schema, load_table, columns, status, chunks_total, mode) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s)",
                (
                    run_id,
                    entry.table_key,
                    entry.source_table,
                    entry.target_schema,
                    entry.target_table,
                    entry.load_schema,
                    entry.load_table,
                    json.dumps([c.to_json() for c in entry.columns]),
                    len(chunks),
                    entry.mode,
                ),
            )
            cur.executemany(
                "INSERT INTO migration_status.migration_chunk_status (run_id, table_key, chunk_index, key_column, "
                "key_kind, lower_bound, upper_bound, include_nulls) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (run_id, c.table_key, c.index, c.key_column, c.key_kind, c.lower, c.upper, c.include_nulls)
                    for c in chunks
                ],
            )
    return run_id


def mark_resumed(conn: psycopg.Connection[Any], run_id: str) -> int:
    """Count one more resume of the run and set it running again; returns the new count."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "UPDATE migration_status.migration_runs SET resume_attempt_count = resume_attempt_count + 1, "
            "status = 'running', finished_at = NULL, last_error = NULL WHERE run_id = %s "
            "RETURNING resume_attempt_count",
            (run_id,),
        )
        return int(cur.fetchone()[0])  # type: ignore[index]


def table_entries(conn: psycopg.Connection[Any], run_id: str) -> list[TableEntry]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_table_status WHERE run_id = %s ORDER BY table_key", (run_id,)
        )
        rows = cur.fetchall()
    conn.commit()
    return [_table(row) for row in rows]


def _table(row: dict[str, Any]) -> TableEntry:
    return TableEntry(
        run_id=row["run_id"],
        table_key=row["table_key"],
        source_table=row["source_table"],
        target_schema=row["target_schema"],
        target_table=row["target_table"],
        load_schema=row["load_schema"],
        load_table=row["load_table"],
        columns=[ColumnPlan.from_json(c) for c in row["columns"]],
        mode=row["mode"],
    )


def _chunk(row: dict[str, Any]) -> Chunk:
    return Chunk(
        table_key=row["table_key"],
        index=row["chunk_index"],
        key_column=row["key_column"],
        key_kind=row["key_kind"],
        lower=row["lower_bound"],
        upper=row["upper_bound"],
        include_nulls=row["include_nulls"],
    )


def chunks(conn: psycopg.Connection[Any], run_id: str, *, open_only: bool = False) -> list[Chunk]:
    """The run's chunks in plan order; ``open_only``: those not done yet."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM migration_status.migration_chunk_status WHERE run_id = %s "
            + ("AND status <> 'done' " if open_only else "")
            + "ORDER BY table_key, chunk_index",
            (run_id,),
        )
        rows = cur.fetchall()
    conn.commit()
    return [_chunk(row) for row in rows]


@dataclass(frozen=True)
class ChunkState:
    status: str
    attempts: int


def load_chunk(
    conn: psycopg.Connection[Any], run_id: str, table_key: str, index: int
) -> tuple[RunEntry, TableEntry, Chunk, ChunkState]:
    """Everything a worker needs to copy one chunk, read from the ledger alone."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT c.*, c.status AS chunk_status FROM migration_status.migration_chunk_status c "
            "WHERE c.run_id = %s AND c.table_key = %s AND c.chunk_index = %s",
            (run_id, table_key, index),
        )
        chunk_row = cur.fetchone()
        cur.execute(
            "SELECT * FROM migration_status.migration_table_status WHERE run_id = %s AND table_key = %s",
            (run_id, table_key),
        )
        table_row = cur.fetchone()
        cur.execute("SELECT * FROM migration_status.migration_runs WHERE run_id = %s", (run_id,))
        run_row = cur.fetchone()
    conn.commit()
    if chunk_row is None or table_row is None or run_row is None:
        from cm_datacopy.errors import DatacopyError

        raise DatacopyError(f"the ledger has no chunk {table_key}#{index} in run {run_id}")
    return (
        _run(run_row),
        _table(table_row),
        _chunk(chunk_row),
        ChunkState(chunk_row["chunk_status"], chunk_row["attempts"]),
    )


def start_attempt(conn: psycopg.Connection[Any], run_id: str, table_key: str, index: int, worker: str) -> int | None:
    """Claim a new attempt number (committed at once); None if the chunk is already done.

    The number fences older attempts: a worker commits its rows only while its attempt is the
    newest, so one that froze and woke up later cannot overwrite a newer attempt.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "UPDATE migration_status.migration_chunk_status SET attempts = attempts + 1, status = 'running', "
            "worker = %s, started_at = now(), last_error = NULL "
            "WHERE run_id = %s AND table_key = %s AND chunk_index = %s AND status <> 'done' RETURNING attempts",
            (worker, run_id, table_key, index),
        )
        row = cur.fetchone()
        cur.execute(
            "UPDATE migration_status.migration_table_status SET status = 'running' "
            "WHERE run_id = %s AND table_key = %s AND status = 'pending'",
            (run_id, table_key),
        )
    return None if row is None else int(row[0])


def lock_chunk(cur: psycopg.Cursor[Any], run_id: str, table_key: str, index: int) -> ChunkState:
    """Lock the chunk's ledger row for this transaction and return its state."""
    cur.execute(
        "SELECT status, attempts FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s AND table_key = %s AND chunk_index = %s FOR UPDATE",
        (run_id, table_key, index),
    )
    status, attempts = cur.fetchone()  # type: ignore[misc]
    return ChunkState(status, attempts)


def done_chunks_of_table(cur: psycopg.Cursor[Any], run_id: str, table_key: str) -> int:
    cur.execute(
        "SELECT count(*) FROM migration_status.migration_chunk_status "
        "WHERE run_id = %s AND table_key = %s AND status = 'done'",
        (run_id, table_key),
    )
    return int(cur.fetchone()[0])  # type: ignore[index]


def mark_done(
    cur: psycopg.Cursor[Any],
    run_id: str,
    table_key: str,
    index: int,
    rows: int,
    nbytes: int,
    seconds: float,
    source: Checksum | None,
    target: Checksum | None,
    nul_replaced: int,
) -> None:
    cur.execute(
        "UPDATE migration_status.migration_chunk_status SET status = 'done', rows_copied = %s, bytes_copied = %s, "
        "duration_seconds = %s, finished_at = now(), last_error = NULL, source_rows = %s, source_checksum = %s, "
        "target_checksum = %s, nul_replaced = %s WHERE run_id = %s AND table_key = %s AND chunk_index = %s",
        (
            rows,
            nbytes,
            seconds,
            source.rows if source else None,
            source.checksum if source else None,
            target.checksum if target else None,
            nul_replaced,
            run_id,
            table_key,
            index,
        ),
    )


def record_failure(
    conn: psycopg.Connection[Any], run_id: str, table_key: str, index: int, attempt: int, error: str, seconds: float
) -> None:
    """Keep the error of this attempt, unless a newer attempt has taken over or finished the chunk."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = '10s'")
        cur.execute(
            "UPDATE migration_status.migration_chunk_status SET status = 'failed', last_error = %s, "
            "duration_seconds = %s, finished_at = now() "
            "WHERE run_id = %s AND table_key = %s AND chunk_index = %s AND attempts = %s AND status <> 'done'",
            (error[:2000], seconds, run_id, table_key, index, attempt),
        )


def finish_run(conn: psycopg.Connection[Any], run_id: str, publish_error: str | None = None) -> str:
    """Derive table and run status from the chunks; returns the run's status."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """
            UPDATE migration_status.migration_table_status t SET
                rows_copied = s.rows,
                status = CASE WHEN s.done = s.total AND (t.mode = 'in_place' OR t.published_at IS NOT NULL)
                                   THEN 'completed'
                              WHEN s.failed > 0 OR s.done = s.total THEN 'failed'
                              WHEN s.done > 0 THEN 'running' ELSE t.status END,
                finished_at = CASE WHEN s.done = s.total AND (t.mode = 'in_place' OR t.published_at IS NOT NULL)
                                   THEN coalesce(t.finished_at, now()) END
            FROM (SELECT table_key, count(*) AS total, count(*) FILTER (WHERE status = 'done') AS done,
                         count(*) FILTER (WHERE status = 'failed') AS failed,
                         coalesce(sum(rows_copied) FILTER (WHERE status = 'done'), 0) AS rows
                  FROM migration_status.migration_chunk_status WHERE run_id = %s GROUP BY table_key) s
            WHERE t.run_id = %s AND t.table_key = s.table_key
            """,
            (run_id, run_id),
        )
        cur.execute(
            "SELECT count(*) FILTER (WHERE status <> 'done'), "
            "string_agg(DISTINCT last_error, '; ') FILTER (WHERE status = 'failed') "
            "FROM migration_status.migration_chunk_status WHERE run_id = %s",
            (run_id,),
        )
        open_chunks, errors = cur.fetchone()  # type: ignore[misc]
        cur.execute(
            "SELECT count(*) FROM migration_status.migration_table_status WHERE run_id = %s AND status <> 'completed'",
            (run_id,),
        )
        open_tables = cur.fetchone()[0]  # type: ignore[index]
        status = "completed" if open_chunks == 0 and open_tables == 0 else "failed"
        problem = errors or (f"{open_chunks} chunks not done" if open_chunks else f"{open_tables} tables not published")
        problem = " ".join(p for p in (problem, publish_error) if p)
        cur.execute(
            "UPDATE migration_status.migration_runs SET status = %s, finished_at = now(), last_error = %s "
            "WHERE run_id = %s",
            (status, None if status == "completed" else problem[:2000], run_id),
        )
    return status


def exists(conn: psycopg.Connection[Any]) -> bool:
    """Whether the ledger schema has been created in this database."""
    row = conn.execute("SELECT to_regclass('migration_status.migration_runs') IS NOT NULL").fetchone()
    conn.commit()
    return bool(row and row[0])


def published_tables(conn: psycopg.Connection[Any], run_id: str) -> set[str]:
    """Tables of the run whose publish-mode swap is done."""
    rows = conn.execute(
        "SELECT table_key FROM migration_status.migration_table_status WHERE run_id = %s AND published_at IS NOT NULL",
        (run_id,),
    ).fetchall()
    conn.commit()
    return {row[0] for row in rows}


def run_is_complete(conn: psycopg.Connection[Any], run_id: str) -> bool:
    """No chunk open and every publish-mode table published: the run can be marked completed."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM migration_status.migration_chunk_status WHERE run_id = %s AND status <> 'done') "
        "+ (SELECT count(*) FROM migration_status.migration_table_status WHERE run_id = %s AND mode = 'publish' "
        "AND published_at IS NULL)",
        (run_id, run_id),
    ).fetchone()
    conn.commit()
    return bool(row) and row[0] == 0
