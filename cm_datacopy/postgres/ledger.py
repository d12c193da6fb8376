"""The ledger: runs, their tables and every chunk, in a schema of the target PostgreSQL.

Every statement on the ledger's tables is in this module. The schema is ``migration_status`` unless
the config names another (``postgres.ledger_schema``), so cm_datacopy can live beside the ledger of
the Step Functions system it replaces, which used that name for tables of another shape.

A chunk is marked done in the same transaction that writes its rows, so the ledger and the target
never disagree. The DDL is versioned (``schema_version``); new versions append to ``_MIGRATIONS``
and run once, under a transaction-level advisory lock so concurrent first uses do not race. Each of
our tables carries the comment ``cm_datacopy ledger``: a schema holding any other table is refused
before anything is written there.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cm_datacopy.errors import ConfigError, DatacopyError
from cm_datacopy.postgres.sql import create_schema_if_absent
from cm_datacopy.ranges import Chunk
from cm_datacopy.typeplan import ColumnPlan

DEFAULT_SCHEMA = "migration_status"
MARKER = "cm_datacopy ledger"
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TABLES = ("schema_version", "migration_runs", "migration_table_status", "migration_chunk_status")

RUN_OPEN = ("running", "failed")  # a run in one of these states may be resumed

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE {s}.migration_runs (
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
    CREATE INDEX migration_runs_source_started ON {s}.migration_runs (source, started_at DESC);

    CREATE TABLE {s}.migration_table_status (
        run_id        text NOT NULL REFERENCES {s}.migration_runs ON DELETE CASCADE,
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

    CREATE TABLE {s}.migration_chunk_status (
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
        FOREIGN KEY (run_id, table_key) REFERENCES {s}.migration_table_status ON DELETE CASCADE
    );
    CREATE INDEX migration_chunk_status_open ON {s}.migration_chunk_status (run_id, status);
    """,
    # 2: per-chunk verification on both sides, NUL replacement counts, publish mode.
    """
    ALTER TABLE {s}.migration_chunk_status
        ADD COLUMN source_rows     bigint,
        ADD COLUMN source_checksum numeric(38,0),
        ADD COLUMN target_checksum numeric(38,0),
        ADD COLUMN nul_replaced    bigint NOT NULL DEFAULT 0;
    ALTER TABLE {s}.migration_table_status
        ADD COLUMN mode           text NOT NULL DEFAULT 'in_place' CHECK (mode IN ('in_place', 'publish')),
        ADD COLUMN published_at   timestamptz,
        ADD COLUMN published_rows bigint,
        ADD COLUMN replaced_rows  bigint;
    """,
    # 3: a run replaced by a newer one is 'superseded' and never resumed; a failure says whether a retry
    #    can help; our tables carry a marker so a schema of the same name holding other tables is refused.
    """
    ALTER TABLE {s}.migration_runs DROP CONSTRAINT migration_runs_status_check;
    ALTER TABLE {s}.migration_runs ADD CONSTRAINT migration_runs_status_check
        CHECK (status IN ('running', 'completed', 'failed', 'superseded'));
    ALTER TABLE {s}.migration_runs ADD COLUMN superseded_by text;
    ALTER TABLE {s}.migration_chunk_status ADD COLUMN error_retryable boolean;
    COMMENT ON TABLE {s}.schema_version IS 'cm_datacopy ledger: applied versions';
    COMMENT ON TABLE {s}.migration_runs IS 'cm_datacopy ledger: one row per run of a source';
    COMMENT ON TABLE {s}.migration_table_status IS 'cm_datacopy ledger: one row per table of a run';
    COMMENT ON TABLE {s}.migration_chunk_status IS 'cm_datacopy ledger: one row per chunk of a table';
    """,
    # 4: how a publish swapped the shadow in ('rename', or 'rows' and why renaming was not safe).
    """
    ALTER TABLE {s}.migration_table_status ADD COLUMN publish_method text;
    """,
]
VERSION = len(_MIGRATIONS)


class RunClosed(DatacopyError):
    """The run was completed or replaced (superseded) while this work was in flight: it commits nothing."""


class LedgerConflict(ConfigError):
    """The ledger schema holds tables cm_datacopy did not create (e.g. the replaced system's)."""


@dataclass(frozen=True)
class RunEntry:
    run_id: str
    source: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    resume_attempt_count: int
    config_fingerprint: str
    snapshot_at: dt.datetime | None
    no_resume: bool
    last_error: str | None
    superseded_by: str | None
    age_hours: float  # by the database's clock, so every caller measures age alike

    @property
    def is_open(self) -> bool:
        return self.status in RUN_OPEN


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
    published_at: dt.datetime | None = None

    def target_column(self, source_name: str) -> str:
        return next(c.target_name for c in self.columns if c.source_name == source_name)


@dataclass(frozen=True)
class ChunkState:
    """A chunk's row: its status and, once done, the figures of the attempt that copied it."""

    status: str
    attempts: int
    rows: int | None = None
    bytes: int | None = None
    seconds: float | None = None
    source_rows: int | None = None
    source_checksum: int | None = None
    target_checksum: int | None = None
    nul_replaced: int = 0
    worker: str | None = None


def _state(row: dict[str, Any]) -> ChunkState:
    def number(key: str) -> int | None:
        return None if row.get(key) is None else int(row[key])

    return ChunkState(
        status=row["status"],
        attempts=row["attempts"],
        rows=number("rows_copied"),
        bytes=number("bytes_copied"),
        seconds=row.get("duration_seconds"),
        source_rows=number("source_rows"),
        source_checksum=number("source_checksum"),
        target_checksum=number("target_checksum"),
        nul_replaced=row.get("nul_replaced") or 0,
        worker=row.get("worker"),
    )


@dataclass(frozen=True)
class PublishState:
    """A publish-mode table, locked for its swap, with what the ledger says of its chunks."""

    mode: str
    published_at: dt.datetime | None
    published_rows: int | None
    target_schema: str
    target_table: str
    load_schema: str
    load_table: str
    columns: list[dict[str, Any]]
    chunks_total: int
    chunks_done: int
    chunks_unverified: int
    rows: int
    publish_method: str | None = None


def new_run_id(source: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{source}-{now}-{uuid.uuid4().hex[:6]}"


def _run(row: dict[str, Any]) -> RunEntry:
    return RunEntry(**{k: row[k] for k in RunEntry.__dataclass_fields__})


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
        published_at=row["published_at"],
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


_RUN_COLUMNS = "*, extract(epoch FROM now() - started_at) / 3600.0 AS age_hours"


def _plan_of(row: dict[str, Any]) -> tuple[RunEntry, TableEntry, Chunk, ChunkState]:
    """A chunk's plan from ``row_to_json`` of its run, table and chunk rows."""
    run_row, table_row, chunk_row = row["run"], row["tab"], row["chunk"]
    for key in ("started_at", "finished_at", "snapshot_at"):
        if run_row[key] is not None:
            run_row[key] = dt.datetime.fromisoformat(run_row[key])
    if table_row["published_at"] is not None:
        table_row["published_at"] = dt.datetime.fromisoformat(table_row["published_at"])
    return _run(run_row), _table(table_row), _chunk(chunk_row), _state(chunk_row)


def _with_settings(
    conn: psycopg.Connection[Any], settings: dict[str, str], statement: sql.Composed, params: dict[str, Any]
) -> dict[str, Any]:
    """``SET LOCAL`` each setting, then ``statement``'s first row, in one round trip (inside a transaction).

    One message carries several statements only in the simple protocol, whose values are bound on the
    client (``ClientCursor``: quoted by psycopg as literals, never formatted by hand).
    """
    sets = [
        sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in settings.items()
    ]
    with psycopg.ClientCursor(conn, row_factory=dict_row) as cur:
        cur.execute(sql.SQL("; ").join([*sets, statement]), params)
        for _ in sets:
            cur.nextset()
        return cur.fetchone()  # type: ignore[return-value]


@dataclass(frozen=True)
class Claim:
    """A chunk's plan, and the attempt claimed for it: None if the chunk is done or, with a fence, if
    another attempt was claimed since the task was made; ``previous_error``: that attempt's error."""

    run: RunEntry
    table: TableEntry
    chunk: Chunk
    state: ChunkState
    attempt: int | None
    previous_error: str | None


class Ledger:
    """The ledger in one schema. Statements are composed once per text and kept."""

    def __init__(self, schema: str = DEFAULT_SCHEMA) -> None:
        if not SCHEMA_NAME.match(schema):
            raise ConfigError(f"postgres.ledger_schema: {schema!r} is not a plain lower-case name (letters, digits, _)")
        self.schema = schema
        self._names = {"s": sql.Identifier(schema)}
        self._composed: dict[str, sql.Composed] = {}

    @property
    def _claim_sql(self) -> sql.Composed:
        """Lock the chunk's row, take the next attempt unless it is done (or fenced off), and read the
        plan of the chunk, its table and its run: one statement."""
        return self.q(
            "WITH p AS (SELECT last_error FROM {s}.migration_chunk_status "
            "           WHERE run_id = %(run)s AND table_key = %(table)s AND chunk_index = %(index)s FOR UPDATE), "
            "claimed AS (UPDATE {s}.migration_chunk_status c SET attempts = c.attempts + 1, status = 'running', "
            "            worker = %(worker)s, started_at = now(), last_error = NULL, error_retryable = NULL FROM p "
            "            WHERE c.run_id = %(run)s AND c.table_key = %(table)s AND c.chunk_index = %(index)s "
            "            AND c.status <> 'done' AND (%(fence)s::integer IS NULL OR c.attempts = %(fence)s) "
            "            RETURNING c.attempts, p.last_error) "
            "SELECT row_to_json(r) AS run, row_to_json(t) AS tab, row_to_json(c) AS chunk, "
            "(SELECT attempts FROM claimed) AS attempt, (SELECT last_error FROM claimed) AS previous_error "
            "FROM {s}.migration_chunk_status c JOIN {s}.migration_table_status t USING (run_id, table_key) "
            f"JOIN (SELECT {_RUN_COLUMNS} FROM {{s}}.migration_runs WHERE run_id = %(run)s) r USING (run_id) "
            "WHERE c.run_id = %(run)s AND c.table_key = %(table)s AND c.chunk_index = %(index)s"
        )

    def q(self, text: str) -> sql.Composed:
        """``text`` with ``{s}`` as the ledger schema (a plain name: no ``%`` can hide in it)."""
        composed = self._composed.get(text)
        if composed is None:
            composed = self._composed[text] = sql.SQL(text).format(**self._names)
        return composed

    def lock_key(self, name: str) -> str:
        """Text of an advisory lock key, per ledger (two deployments in one database never collide)."""
        prefix = "cm_datacopy" if self.schema == DEFAULT_SCHEMA else f"cm_datacopy[{self.schema}]"
        return f"{prefix}:{name}"

    # ---- existence, ownership, DDL ---------------------------------------------------------------

    def _relations(self, conn: psycopg.Connection[Any]) -> dict[str, str | None]:
        """Tables in the ledger schema → their comment."""
        rows = conn.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
            (self.schema,),
        ).fetchall()
        return {name: comment for name, comment in rows}

    def _ours_before_markers(self, conn: psycopg.Connection[Any], tables: dict[str, str | None]) -> bool:
        """A ledger of versions 1–2 (before markers): our version table and our runs table's shape."""
        if not {"schema_version", "migration_runs"} <= set(tables):
            return False
        row = conn.execute(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'migration_runs' "
            "AND a.attname IN ('run_id', 'source', 'config_fingerprint') AND NOT a.attisdropped",
            (self.schema,),
        ).fetchone()
        return bool(row and row[0] == 3)

    def _inspect(self, conn: psycopg.Connection[Any]) -> tuple[bool, list[str]]:
        """(our runs table exists, tables in the schema that are not ours)."""
        tables = self._relations(conn)
        foreign = sorted(name for name, comment in tables.items() if not (comment or "").startswith(MARKER))
        if foreign and set(foreign) <= set(TABLES) and self._ours_before_markers(conn, tables):
            foreign = []
        return "migration_runs" in tables, foreign

    def _conflict(self, foreign: list[str]) -> LedgerConflict:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        return LedgerConflict(
            f"schema {self.schema!r} holds tables cm_datacopy did not create ({shown}), e.g. the ledger of the "
            "Step Functions system of the same name; nothing was written. Either set postgres.ledger_schema to "
            f"another schema (e.g. cm_datacopy_ledger), or rename the old tables' schema (ALTER SCHEMA "
            f"{self.schema} RENAME TO {self.schema}_legacy)"
        )

    def exists(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether our ledger exists in this database. Reads only; raises ``LedgerConflict`` if the
        schema holds tables that are not ours — every command asks this before it writes anything."""
        exists, foreign = self._inspect(conn)
        conn.commit()
        if foreign:
            raise self._conflict(foreign)
        return exists

    def scratch_schema(self, cur: psycopg.Cursor[Any]) -> str:
        """The ledger schema, for scratch tables of a transaction that will roll back (the self-test).

        Created in that transaction if absent, under the lock ``ensure`` takes: a run of another
        source creating the ledger at the same moment waits, instead of one of the two failing.
        """
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self.lock_key("ledger-ddl"),))
        create_schema_if_absent(cur, self.schema)
        return self.schema

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Create or upgrade the ledger; idempotent and safe when many workers start at once."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self.lock_key("ledger-ddl"),))
            _, foreign = self._inspect(conn)
            if foreign:
                raise self._conflict(foreign)
            create_schema_if_absent(cur, self.schema)
            cur.execute(
                self.q(
                    "CREATE TABLE IF NOT EXISTS {s}.schema_version "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            cur.execute(self.q("SELECT coalesce(max(version), 0) FROM {s}.schema_version"))
            current = cur.fetchone()[0]  # type: ignore[index]
            for version, ddl in enumerate(_MIGRATIONS, start=1):
                if version > current:
                    cur.execute(self.q(ddl))
                    cur.execute(self.q("INSERT INTO {s}.schema_version (version) VALUES (%s)"), (version,))

    # ---- runs --------------------------------------------------------------------------------------

    def get_run(self, conn: psycopg.Connection[Any], run_id: str) -> RunEntry | None:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self.q(f"SELECT {_RUN_COLUMNS} FROM {{s}}.migration_runs WHERE run_id = %s"), (run_id,))
            row = cur.fetchone()
        conn.commit()
        return _run(row) if row else None

    def runs(self, conn: psycopg.Connection[Any], source: str, limit: int = 20) -> list[RunEntry]:
        """The source's runs, newest first."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    f"SELECT {_RUN_COLUMNS} FROM {{s}}.migration_runs WHERE source = %s "
                    "ORDER BY started_at DESC, run_id DESC LIMIT %s"
                ),
                (source, limit),
            )
            rows = cur.fetchall()
        conn.commit()
        return [_run(row) for row in rows]

    def latest_run(self, conn: psycopg.Connection[Any], source: str) -> RunEntry | None:
        runs = self.runs(conn, source, 1)
        return runs[0] if runs else None

    def sources(self, conn: psycopg.Connection[Any]) -> list[str]:
        rows = conn.execute(self.q("SELECT DISTINCT source FROM {s}.migration_runs ORDER BY source")).fetchall()
        conn.commit()
        return [row[0] for row in rows]

    def find_run_by_suffix(self, conn: psycopg.Connection[Any], source: str, suffix: str) -> RunEntry | None:
        """The source's run whose id ends with ``-suffix`` (the random tail of ``new_run_id``)."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    f"SELECT {_RUN_COLUMNS} FROM {{s}}.migration_runs WHERE source = %s AND right(run_id, %s) = %s "
                    "ORDER BY started_at DESC LIMIT 2"
                ),
                (source, len(suffix) + 1, f"-{suffix}"),
            )
            rows = cur.fetchall()
        conn.commit()
        if len(rows) > 1:
            raise DatacopyError(f"two runs of {source!r} end with {suffix!r}: {rows[0]['run_id']}, {rows[1]['run_id']}")
        return _run(rows[0]) if rows else None

    def create_run(
        self,
        conn: psycopg.Connection[Any],
        run_id: str,
        source: str,
        fingerprint: str,
        snapshot_at: dt.datetime | None,
        no_resume: bool,
        tables: list[tuple[TableEntry, list[Chunk]]],
    ) -> list[str]:
        """Store a new run with its whole chunk plan, and close the source's open runs as ``superseded``,
        in one transaction: from its commit on, the new run is the only one that can be resumed.
        Returns the ids of the runs it superseded."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                self.q(
                    "UPDATE {s}.migration_runs SET status = 'superseded', superseded_by = %s, "
                    "finished_at = coalesce(finished_at, now()) WHERE source = %s AND status IN ('running', 'failed') "
                    "RETURNING run_id"
                ),
                (run_id, source),
            )
            superseded = [row[0] for row in cur.fetchall()]
            cur.execute(
                self.q(
                    "INSERT INTO {s}.migration_runs (run_id, source, status, config_fingerprint, snapshot_at, "
                    "no_resume) VALUES (%s, %s, 'running', %s, %s, %s)"
                ),
                (run_id, source, fingerprint, snapshot_at, no_resume),
            )
            for entry, chunks in tables:
                cur.execute(
                    self.q(
                        "INSERT INTO {s}.migration_table_status (run_id, table_key, source_table, target_schema, "
                        "target_table, load_schema, load_table, columns, status, chunks_total, mode) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s)"
                    ),
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
                    self.q(
                        "INSERT INTO {s}.migration_chunk_status (run_id, table_key, chunk_index, key_column, "
                        "key_kind, lower_bound, upper_bound, include_nulls) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    ),
                    [
                        (run_id, c.table_key, c.index, c.key_column, c.key_kind, c.lower, c.upper, c.include_nulls)
                        for c in chunks
                    ],
                )
        return superseded

    def mark_resumed(self, conn: psycopg.Connection[Any], run_id: str) -> int:
        """Count one more resume of an open run and set it running again; returns the new count.

        Refuses (``DatacopyError``) a run that is no longer open: completed or superseded runs stay closed.
        """
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                self.q(
                    "UPDATE {s}.migration_runs SET resume_attempt_count = resume_attempt_count + 1, "
                    "status = 'running', finished_at = NULL, last_error = NULL "
                    "WHERE run_id = %s AND status IN ('running', 'failed') RETURNING resume_attempt_count"
                ),
                (run_id,),
            )
            row = cur.fetchone()
        if row is None:
            raise DatacopyError(f"run {run_id} is closed (completed or superseded) and cannot be resumed")
        return int(row[0])

    def finish_run(self, conn: psycopg.Connection[Any], run_id: str, problem: str | None = None) -> str:
        """Decide the run's status from its chunks and tables (the one place that does): ``completed``
        when every chunk is done and every publish-mode table published, else ``failed`` with the reasons.
        A superseded run stays superseded. Returns the status."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                self.q(
                    """
                    UPDATE {s}.migration_table_status t SET
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
                          FROM {s}.migration_chunk_status WHERE run_id = %s GROUP BY table_key) s
                    WHERE t.run_id = %s AND t.table_key = s.table_key
                    """
                ),
                (run_id, run_id),
            )
            cur.execute(
                self.q(
                    "SELECT count(*) FILTER (WHERE status <> 'done'), "
                    "string_agg(DISTINCT last_error, '; ') FILTER (WHERE status = 'failed') "
                    "FROM {s}.migration_chunk_status WHERE run_id = %s"
                ),
                (run_id,),
            )
            open_chunks, errors = cur.fetchone()  # type: ignore[misc]
            cur.execute(
                self.q(
                    "SELECT string_agg(table_key, ', ' ORDER BY table_key) FROM {s}.migration_table_status "
                    "WHERE run_id = %s AND status <> 'completed'"
                ),
                (run_id,),
            )
            open_tables = cur.fetchone()[0]  # type: ignore[index]
            status = "completed" if not open_chunks and not open_tables else "failed"
            reasons = [
                errors or (f"{open_chunks} chunks not done" if open_chunks else f"not published: {open_tables}"),
                problem,
            ]
            message = None if status == "completed" else " ".join(r for r in reasons if r)[:2000]
            cur.execute(
                self.q(
                    "UPDATE {s}.migration_runs SET status = CASE WHEN status = 'superseded' THEN status ELSE %s END, "
                    "finished_at = now(), last_error = %s WHERE run_id = %s RETURNING status"
                ),
                (status, message, run_id),
            )
            row = cur.fetchone()
        return str(row[0]) if row else status

    def is_complete(self, conn: psycopg.Connection[Any], run_id: str) -> bool:
        """No chunk open and every publish-mode table published."""
        row = conn.execute(
            self.q(
                "SELECT (SELECT count(*) FROM {s}.migration_chunk_status WHERE run_id = %s AND status <> 'done') "
                "+ (SELECT count(*) FROM {s}.migration_table_status WHERE run_id = %s AND mode = 'publish' "
                "AND published_at IS NULL)"
            ),
            (run_id, run_id),
        ).fetchone()
        conn.commit()
        return bool(row) and row[0] == 0

    def finish_if_complete(self, conn: psycopg.Connection[Any], run_id: str) -> bool:
        """Mark the run completed once nothing is left; never marks it failed (chunks may still be queued)."""
        if self.is_complete(conn, run_id):
            self.finish_run(conn, run_id)
            return True
        return False

    # ---- tables ------------------------------------------------------------------------------------

    def table_entries(self, conn: psycopg.Connection[Any], run_id: str) -> list[TableEntry]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q("SELECT * FROM {s}.migration_table_status WHERE run_id = %s ORDER BY table_key"), (run_id,)
            )
            rows = cur.fetchall()
        conn.commit()
        return [_table(row) for row in rows]

    def lock_for_publish(self, cur: psycopg.Cursor[Any], run_id: str, table_key: str) -> PublishState:
        """Lock the table's ledger row for this transaction; what the ledger says of its chunks."""
        cur.execute(
            self.q(
                "SELECT t.mode, t.published_at, t.published_rows, t.target_schema, t.target_table, t.load_schema, "
                "t.load_table, t.columns, t.chunks_total, c.done, c.unverified, c.rows, t.publish_method "
                "FROM {s}.migration_table_status t, LATERAL (SELECT count(*) FILTER (WHERE status = 'done') AS done, "
                "count(*) FILTER (WHERE status = 'done' AND source_checksum IS DISTINCT FROM target_checksum) "
                "AS unverified, coalesce(sum(rows_copied) FILTER (WHERE status = 'done'), 0) AS rows "
                "FROM {s}.migration_chunk_status WHERE run_id = t.run_id AND table_key = t.table_key) c "
                "WHERE t.run_id = %s AND t.table_key = %s FOR UPDATE OF t"
            ),
            (run_id, table_key),
        )
        row = cur.fetchone()
        if row is None:
            raise DatacopyError(f"the ledger has no table {table_key} in run {run_id}")
        return PublishState(*row)

    def mark_published(
        self, cur: psycopg.Cursor[Any], run_id: str, table_key: str, new_rows: int, old_rows: int, method: str
    ) -> None:
        cur.execute(
            self.q(
                "UPDATE {s}.migration_table_status SET published_at = now(), published_rows = %s, replaced_rows = %s, "
                "publish_method = %s WHERE run_id = %s AND table_key = %s"
            ),
            (new_rows, old_rows, method, run_id, table_key),
        )

    def key_columns(self, cur: psycopg.Cursor[Any], run_id: str) -> dict[str, str]:
        """table_key → the source column its chunks are ranges of (tables copied as one chunk: absent)."""
        cur.execute(
            self.q(
                "SELECT DISTINCT table_key, key_column FROM {s}.migration_chunk_status "
                "WHERE run_id = %s AND key_column IS NOT NULL"
            ),
            (run_id,),
        )
        return dict(cur.fetchall())

    def unpublished_shadows(self, cur: psycopg.Cursor[Any], source: str, keep_run: str) -> list[tuple[str, str]]:
        """(schema, table) of shadows of the source's other unpublished runs."""
        cur.execute(
            self.q(
                "SELECT DISTINCT t.load_schema, t.load_table FROM {s}.migration_table_status t "
                "JOIN {s}.migration_runs r USING (run_id) WHERE r.source = %s AND t.run_id <> %s "
                "AND t.mode = 'publish' AND t.published_at IS NULL"
            ),
            (source, keep_run),
        )
        return [(schema, table) for schema, table in cur.fetchall()]

    # ---- chunks ------------------------------------------------------------------------------------

    def chunks(
        self,
        conn: psycopg.Connection[Any],
        run_id: str,
        *,
        table_key: str | None = None,
        open_only: bool = False,
    ) -> list[Chunk]:
        """The run's chunks in plan order (of one table, if given); ``open_only``: those not done."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    "SELECT * FROM {s}.migration_chunk_status WHERE run_id = %s "
                    "AND (%s::text IS NULL OR table_key = %s) AND (NOT %s OR status <> 'done') "
                    "ORDER BY table_key, chunk_index"
                ),
                (run_id, table_key, table_key, open_only),
            )
            rows = cur.fetchall()
        conn.commit()
        return [_chunk(row) for row in rows]

    def chunk_rows(self, conn: psycopg.Connection[Any], run_id: str, table_key: str | None = None) -> list[dict]:
        """The run's chunk rows as stored (status, rows, checksums, attempts, errors), in plan order."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    "SELECT * FROM {s}.migration_chunk_status WHERE run_id = %s "
                    "AND (%s::text IS NULL OR table_key = %s) ORDER BY table_key, chunk_index"
                ),
                (run_id, table_key, table_key),
            )
            rows = cur.fetchall()
        conn.commit()
        return rows

    def claim_chunk(
        self,
        conn: psycopg.Connection[Any],
        run_id: str,
        table_key: str,
        index: int,
        worker: str,
        *,
        fence: int | None = None,
        lock_timeout_seconds: int,
    ) -> Claim:
        """Everything a worker needs to copy one chunk, read from the ledger alone, and a new attempt
        number for it, claimed and committed at once: one statement, one transaction.

        The number fences older attempts: a worker commits its rows only while its attempt is the
        newest, so one that froze and woke up later cannot overwrite a newer attempt. No attempt is
        claimed if the chunk is done or, with ``fence``, if another attempt was claimed since the task
        was made (the chunk's attempts moved past ``fence``). The chunk's state is read as of the
        statement's start: when no attempt was claimed, read it again with ``chunk_state``.
        """
        params = {"run": run_id, "table": table_key, "index": index, "worker": worker, "fence": fence}
        with conn.transaction():
            row = _with_settings(conn, {"lock_timeout": f"{lock_timeout_seconds}s"}, self._claim_sql, params)
        if row is None:
            raise DatacopyError(f"the ledger has no chunk {table_key}#{index} in run {run_id}")
        run, table, chunk, state = _plan_of(row)
        return Claim(run, table, chunk, state, row["attempt"], row["previous_error"])

    def end_stale_holder(
        self, conn: psycopg.Connection[Any], run_id: str, table_key: str, index: int, older_than_seconds: int
    ) -> list[int]:
        """Terminate the backend whose transaction holds the chunk's ledger row, if that transaction is
        older than ``older_than_seconds``. The holder is found by the row's ``xmax`` (the locking
        transaction), never by guessing. Returns the terminated backend pids."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                self.q(
                    "SELECT a.pid, pg_terminate_backend(a.pid, 5000) FROM {s}.migration_chunk_status c "
                    "JOIN pg_stat_activity a ON a.backend_xid = c.xmax "
                    "WHERE c.run_id = %s AND c.table_key = %s AND c.chunk_index = %s AND a.pid <> pg_backend_pid() "
                    "AND a.xact_start < now() - make_interval(secs => %s)"
                ),
                (run_id, table_key, index, older_than_seconds),
            )
            return [pid for pid, _ in cur.fetchall()]

    def lock_chunk(
        self,
        cur: psycopg.Cursor[Any],
        run_id: str,
        table_key: str,
        index: int,
        settings: dict[str, str] | None = None,
    ) -> ChunkState:
        """Lock the chunk's ledger row for this transaction and return its state; ``settings``: set for
        the transaction (``SET LOCAL``) first, in the same round trip."""
        statement = self.q(
            "SELECT status, attempts FROM {s}.migration_chunk_status "
            "WHERE run_id = %(run)s AND table_key = %(table)s AND chunk_index = %(index)s FOR UPDATE"
        )
        row = _with_settings(
            cur.connection, settings or {}, statement, {"run": run_id, "table": table_key, "index": index}
        )
        return ChunkState(row["status"], row["attempts"])

    def hold_open_run(self, cur: psycopg.Cursor[Any], run_id: str) -> None:
        """Inside a transaction about to commit a run's work: the run is still open, and stays so until
        this transaction ends (its row is share-locked, so starting a newer run of the source — which
        supersedes this one — waits for the commit, and a commit after that sees 'superseded' here).
        A worker that cannot hold the source's lock (a Lambda, an ECS task) is thus never able to
        write a replaced run's rows over a newer run's."""
        cur.execute(self.q("SELECT status FROM {s}.migration_runs WHERE run_id = %s FOR SHARE"), (run_id,))
        row = cur.fetchone()
        status = row[0] if row else "missing"
        if status not in RUN_OPEN:
            raise RunClosed(f"run {run_id} is {status}: a newer run replaced it or it ended; this work is discarded")

    def chunk_state(self, conn: psycopg.Connection[Any], run_id: str, table_key: str, index: int) -> ChunkState:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    "SELECT * FROM {s}.migration_chunk_status WHERE run_id = %s AND table_key = %s AND chunk_index = %s"
                ),
                (run_id, table_key, index),
            )
            row = cur.fetchone()
        conn.commit()
        if row is None:
            raise DatacopyError(f"the ledger has no chunk {table_key}#{index} in run {run_id}")
        return _state(row)

    def done_chunks_of_table(self, cur: psycopg.Cursor[Any], run_id: str, table_key: str) -> int:
        cur.execute(
            self.q(
                "SELECT count(*) FROM {s}.migration_chunk_status "
                "WHERE run_id = %s AND table_key = %s AND status = 'done'"
            ),
            (run_id, table_key),
        )
        return int(cur.fetchone()[0])  # type: ignore[index]

    def mark_done(
        self,
        cur: psycopg.Cursor[Any],
        run_id: str,
        table_key: str,
        index: int,
        *,
        rows: int,
        nbytes: int,
        seconds: float,
        source_rows: int | None,
        source_checksum: int | None,
        target_checksum: int | None,
        nul_replaced: int,
    ) -> None:
        """Mark the (locked) chunk done, in the transaction that holds its rows; ``hold_open_run`` in the
        same statement: the run's row is share-locked until the commit, and a run that is no longer
        open marks nothing (``RunClosed``, the caller rolls back). ``finished_at`` is the clock's time
        now, just before the commit (``now()`` would be the transaction's start, before the COPY)."""
        cur.execute(
            self.q(
                "WITH run AS (SELECT status FROM {s}.migration_runs WHERE run_id = %s FOR SHARE) "
                "UPDATE {s}.migration_chunk_status SET status = 'done', rows_copied = %s, bytes_copied = %s, "
                "duration_seconds = %s, finished_at = clock_timestamp(), last_error = NULL, error_retryable = NULL, "
                "source_rows = %s, source_checksum = %s, target_checksum = %s, nul_replaced = %s "
                "FROM run WHERE run_id = %s AND table_key = %s AND chunk_index = %s AND run.status = ANY(%s) "
                "RETURNING run.status"
            ),
            (
                run_id,
                rows,
                nbytes,
                seconds,
                source_rows,
                source_checksum,
                target_checksum,
                nul_replaced,
                run_id,
                table_key,
                index,
                list(RUN_OPEN),
            ),
        )
        if cur.fetchone() is None:
            self.hold_open_run(cur, run_id)  # says why: the run is closed (or its chunk row is gone)
            raise RunClosed(f"run {run_id} has no chunk {table_key}#{index} to mark done; this work is discarded")

    def record_failure(
        self,
        conn: psycopg.Connection[Any],
        run_id: str,
        table_key: str,
        index: int,
        attempt: int,
        error: str,
        seconds: float,
        retryable: bool,
    ) -> None:
        """Keep the error of this attempt, unless a newer attempt has taken over or finished the chunk."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            cur.execute(
                self.q(
                    "UPDATE {s}.migration_chunk_status SET status = 'failed', last_error = %s, error_retryable = %s, "
                    "duration_seconds = %s, finished_at = now() "
                    "WHERE run_id = %s AND table_key = %s AND chunk_index = %s AND attempts = %s AND status <> 'done'"
                ),
                (error[:2000], retryable, seconds, run_id, table_key, index, attempt),
            )

    # ---- reports -----------------------------------------------------------------------------------

    def table_progress(self, conn: psycopg.Connection[Any], run_id: str) -> list[dict[str, Any]]:
        """Per table of a run: status, chunks done/failed/total, rows, attempts, throughput, last error."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    """
                    SELECT t.table_key, t.status, t.mode, t.chunks_total, t.published_at, t.published_rows,
                           count(*) FILTER (WHERE c.status = 'done')              AS chunks_done,
                           count(*) FILTER (WHERE c.status = 'failed')            AS chunks_failed,
                           count(*) FILTER (WHERE c.status = 'running')           AS chunks_running,
                           coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0) AS rows_copied,
                           coalesce(sum(c.attempts), 0)                           AS attempts,
                           sum(c.rows_copied) FILTER (WHERE c.status = 'done')
                               / nullif(sum(c.duration_seconds) FILTER (WHERE c.status = 'done'), 0)
                               AS rows_per_second,
                           count(*) FILTER (WHERE c.status = 'done' AND c.source_checksum IS NOT NULL
                                            AND c.source_checksum = c.target_checksum) AS chunks_verified
                    FROM {s}.migration_table_status t
                    JOIN {s}.migration_chunk_status c USING (run_id, table_key)
                    WHERE t.run_id = %s
                    GROUP BY t.table_key, t.status, t.mode, t.chunks_total, t.published_at, t.published_rows
                    ORDER BY t.table_key
                    """
                ),
                (run_id,),
            )
            rows = cur.fetchall()
        conn.commit()
        return rows

    def problem_chunks(
        self, conn: psycopg.Connection[Any], run_id: str, stalled_after: float | None = None
    ) -> list[dict[str, Any]]:
        """Chunks that failed or are running, with their last error; ``stalled``: running, and claimed more
        than ``stalled_after`` seconds ago by the database's clock (the chunk's transaction cannot be alive)."""
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                self.q(
                    "SELECT table_key, chunk_index, status, attempts, last_error, error_retryable, worker, started_at, "
                    "coalesce(status = 'running' AND started_at < now() - make_interval(secs => %s), false) AS stalled "
                    "FROM {s}.migration_chunk_status WHERE run_id = %s AND status IN ('failed', 'running') "
                    "ORDER BY table_key, chunk_index"
                ),
                (stalled_after, run_id),
            )
            rows = cur.fetchall()
        conn.commit()
        return rows

    def done_chunks(self, conn: psycopg.Connection[Any], source: str) -> int:
        """Chunks done in any run of the source (the demo waits for a few before its kill)."""
        row = conn.execute(
            self.q(
                "SELECT count(*) FROM {s}.migration_chunk_status c JOIN {s}.migration_runs r USING (run_id) "
                "WHERE r.source = %s AND c.status = 'done'"
            ),
            (source,),
        ).fetchone()
        conn.commit()
        return int(row[0]) if row else 0
