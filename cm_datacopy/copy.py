"""Copy one chunk: the unit of work every caller runs (the CLI's runner, the Dagster assets).

Follow a row from Snowflake to PostgreSQL in ``copy_chunk`` below:

1. the ledger says which rows the chunk holds (its key range), which columns, and where they load,
   so a worker needs only the config and (run, table, chunk);
2. a new attempt number is claimed (committed at once) — it fences off older attempts;
3. Snowflake runs the chunk's SELECT; its result streams as Arrow record batches, while a second
   Snowflake session computes the chunk's checksum;
4. one PostgreSQL transaction: lock the chunk's ledger row, check the attempt is still the newest
   and the chunk not done, delete the target rows of the chunk's range (in place; a publish-mode
   shadow never holds rows of an unfinished chunk), COPY the Arrow batches in (encoded to CSV by
   Arrow's C++ writer, no per-row Python), compare PostgreSQL's checksum of the range with
   Snowflake's, mark the chunk done with its rows and both checksums, commit.

A process killed at any instant leaves either the old rows and an open chunk, or the new rows and
a done chunk. A worker frozen inside step 4 cannot block the next attempt for long: PostgreSQL
ends its transaction after ``chunk_timeout_seconds`` when it is between statements
(idle-in-transaction timeout) or running one (statement timeout); frozen inside COPY, where the
server waits for client data and acts on neither, the next attempt ends it once it is older than
``chunk_timeout_seconds`` (``fence.claim_attempt``: ``pg_terminate_backend`` of the row lock's holder).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from cm_datacopy import checksum, ledger, source
from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ChunkError, DatacopyError, TruncationRefused
from cm_datacopy.fence import claim_attempt
from cm_datacopy.redact import redact
from cm_datacopy.sql import BoundIdentifier
from cm_datacopy.typeplan import ColumnPlan


@dataclass(frozen=True)
class ChunkResult:
    """What one call of ``copy_chunk`` did; the Dagster layer turns it into metadata."""

    run_id: str
    table_key: str
    chunk_index: int
    outcome: Literal["copied", "already_done", "superseded"]
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    attempt: int = 0
    rows_replaced: int = 0
    verified: bool = False
    nul_replaced: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Connections:
    """One worker's connections, opened on first use and reused across its chunks."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self._pg: psycopg.Connection[Any] | None = None
        self._sf_stack: contextlib.ExitStack | None = None
        self._sf: Any = None
        self._aux_stack: contextlib.ExitStack | None = None
        self._aux: Any = None

    def pg(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            try:
                self._pg = psycopg.connect(**self.cfg.postgres.connect_kwargs())
            except psycopg.OperationalError as exc:
                raise DatacopyError(
                    redact(f"cannot connect to PostgreSQL {self.cfg.postgres.host}:{self.cfg.postgres.port}: {exc}")
                ) from None
        return self._pg

    def snowflake(self) -> Any:
        if self._sf is None or self._sf.is_closed():
            self._close_snowflake()
            self._sf_stack = contextlib.ExitStack()
            self._sf = self._sf_stack.enter_context(source.connect(self.cfg.snowflake))
        return self._sf

    def snowflake_aux(self) -> Any:
        """A second Snowflake session, so a chunk's checksum runs while its rows stream."""
        if self._aux is None or self._aux.is_closed():
            if self._aux_stack is not None:
                self._aux_stack.close()
            self._aux_stack = contextlib.ExitStack()
            self._aux = self._aux_stack.enter_context(source.connect(self.cfg.snowflake))
        return self._aux

    def _close_snowflake(self) -> None:
        for stack in (self._sf_stack, self._aux_stack):
            if stack is not None:
                stack.close()
        self._sf_stack, self._sf, self._aux_stack, self._aux = None, None, None, None

    def reset(self) -> None:
        """Drop connections after a failure; the next use opens fresh ones."""
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
        self._pg = None
        self._close_snowflake()

    def close(self) -> None:
        self.reset()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def copy_chunk(
    cfg: SourceConfig,
    run_id: str,
    table_key: str,
    chunk_index: int,
    *,
    connections: Connections | None = None,
    worker: str | None = None,
) -> ChunkResult:
    """Copy one chunk of one table in one transaction; safe to call again for the same chunk."""
    with contextlib.ExitStack() as stack:
        conns = connections or stack.enter_context(Connections(cfg))
        pg = conns.pg()

        # 1. What the chunk is, from the ledger alone (a Lambda or ECS worker needs nothing else).
        run, table, chunk, state = ledger.load_chunk(pg, run_id, table_key, chunk_index)
        if state.status == "done":
            return ChunkResult(run_id, table_key, chunk_index, "already_done", attempt=state.attempts)

        # 2. A new attempt number, committed before any work: older attempts can no longer commit.
        attempt = claim_attempt(pg, cfg, run_id, table_key, chunk_index, worker or worker_name())
        if attempt is None:
            return ChunkResult(run_id, table_key, chunk_index, "already_done")
        started = time.monotonic()
        try:
            sf = conns.snowflake()
            nuls = NulPolicy.for_source(cfg, table.columns, chunk.key_column)
            # 3. Snowflake: the chunk's checksum (on a second session, meanwhile), and its rows as Arrow
            #    batches, streamed while they are written.
            checksums = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="checksum"))
            expected_future = (
                checksums.submit(
                    checksum.snowflake_checksum,
                    conns.snowflake_aux(),
                    table.source_table,
                    table.columns,
                    chunk,
                    run.snapshot_at,
                    nuls.replacement,
                )
                if cfg.verify
                else None
            )
            batches = source.read_chunk(sf, table.source_table, table.columns, chunk, run.snapshot_at)
            target = sql.Identifier(table.load_schema, table.load_table)
            key_column = table.target_column(chunk.key_column) if chunk.key_column else None
            with pg.transaction(), pg.cursor() as cur:
                # 4. One transaction for the rows and the ledger.
                _set_timeouts(cur, cfg)
                current = ledger.lock_chunk(cur, run_id, table_key, chunk_index)
                if current.status == "done" or current.attempts != attempt:
                    return ChunkResult(run_id, table_key, chunk_index, "superseded", attempt=attempt)
                if key_column is None:
                    _guard_full_replace(cur, run_id, table_key)
                    where, params = sql.SQL("TRUE"), []
                else:
                    where, params = chunk.postgres_where(key_column)
                if table.mode == "in_place":
                    delete_from = BoundIdentifier(table.load_schema, table.load_table)  # % in names, with params
                    cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(delete_from, where), params)
                    replaced = cur.rowcount
                else:
                    # A shadow holds only rows of done chunks (each commits with its done mark), so this
                    # chunk's range is empty there: no delete, no scan.
                    replaced = 0
                rows, nbytes = _copy_batches(cur, target, table.columns, batches, nuls)
                # Verification inside the load: PostgreSQL's checksum of the range must equal Snowflake's.
                actual = checksum.postgres_checksum(cur, target, table.columns, where, params) if cfg.verify else None
                expected = expected_future.result() if expected_future is not None else None
                if expected is not None and expected != actual:
                    raise ChunkVerificationError(
                        f"checksums differ after loading: Snowflake {expected}, PostgreSQL {actual}"
                    )
                seconds = time.monotonic() - started
                ledger.mark_done(
                    cur, run_id, table_key, chunk_index, rows, nbytes, seconds, expected, actual, nuls.replaced
                )
            return ChunkResult(
                run_id,
                table_key,
                chunk_index,
                "copied",
                rows,
                nbytes,
                seconds,
                attempt,
                max(replaced, 0),
                verified=expected is not None,
                nul_replaced=nuls.replaced,
            )
        except Exception as exc:
            message = describe_error(exc)
            conns.reset()
            with contextlib.suppress(Exception), Connections(cfg) as fresh:
                ledger.record_failure(
                    fresh.pg(), run_id, table_key, chunk_index, attempt, message, time.monotonic() - started
                )
            raise ChunkError(f"chunk {table_key}#{chunk_index} (attempt {attempt}) failed: {message}") from None


def _set_timeouts(cur: psycopg.Cursor[Any], cfg: SourceConfig) -> None:
    """Bound how long this transaction can hold locks if its worker freezes, and how long it waits."""
    cur.execute(
        sql.SQL(
            "SET LOCAL statement_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}; "
            "SET LOCAL lock_timeout = {}"
        ).format(
            sql.Literal(f"{cfg.chunk_timeout_seconds}s"),
            sql.Literal(f"{cfg.chunk_timeout_seconds}s"),
            sql.Literal(f"{cfg.lock_timeout_seconds}s"),
        )
    )


def _guard_full_replace(cur: psycopg.Cursor[Any], run_id: str, table_key: str) -> None:
    """Truncation protection for a table copied as one chunk, which replaces every target row.

    Two independent layers must agree: the ledger (no chunk of this table is done in this run,
    read under the chunk's row lock) and the target (its rows are replaced only inside this
    transaction, which reloads them before it commits: the table is never left empty).
    """
    if ledger.done_chunks_of_table(cur, run_id, table_key):
        raise TruncationRefused(f"refusing to replace {table_key}: the ledger shows a completed chunk in run {run_id}")
    if cur.connection.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise TruncationRefused(f"refusing to replace {table_key} outside the transaction that reloads it")


# ---- Arrow batches → COPY ------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_PAIRS = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 15]], axis=1)


def _bytea_hex(arr: pa.Array) -> pa.Array:
    """BINARY values as PostgreSQL's bytea hex text (``\\x0a1b``), vectorised with numpy."""
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    new_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(2 * lengths + 2, out=new_offsets[1:])
    out = np.empty(int(new_offsets[-1]), dtype=np.uint8)
    starts = new_offsets[:-1]
    body = np.ones(len(out), dtype=bool)
    body[starts] = False
    body[starts + 1] = False
    out[starts] = ord("\\")
    out[starts + 1] = ord("x")
    out[body] = _HEX_PAIRS[raw].reshape(-1)
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(new_offsets.tobytes()), pa.py_buffer(out.tobytes()))
    return pc.if_else(arr.is_null(), pa.scalar(None, pa.large_string()), text)


class NulByteError(DatacopyError):
    """A text value holds a NUL byte, which PostgreSQL text and jsonb cannot store."""


class ChunkVerificationError(DatacopyError):
    """The rows in PostgreSQL do not match Snowflake's checksum; the chunk was rolled back."""


@dataclass
class NulPolicy:
    """What to do with NUL bytes (``nul_bytes`` in the config), and how many were replaced."""

    replacement: str | None
    key_index: int | None
    key_name: str | None
    replaced: int = 0

    @classmethod
    def for_source(cls, cfg: SourceConfig, columns: list[ColumnPlan], key: str | None) -> NulPolicy:
        index = next((i for i, c in enumerate(columns) if c.source_name == key), None)
        return cls(cfg.nul_replacement if cfg.nul_bytes == "replace" else None, index, key)

    def apply(self, batch: pa.RecordBatch, i: int, col: ColumnPlan, arr: pa.Array) -> pa.Array:
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            return arr
        # jsonb refuses the escape \u0000 as text refuses the byte itself.
        needle, swap = (
            ("\\u0000", json.dumps(self.replacement or "")[1:-1])
            if col.encoding == "json"
            else ("\x00", self.replacement or "")
        )
        hits = pc.match_substring(arr, needle)
        count = pc.sum(hits).as_py() or 0
        if not count:
            return arr
        if self.replacement is None:
            row = pc.index(hits, True).as_py()
            where = (
                f"{self.key_name} = {batch.column(self.key_index)[row].as_py()}"
                if self.key_index is not None
                else f"row {row + 1} of the chunk"
            )
            raise NulByteError(
                f"column {col.source_name!r} of the row with {where} holds a NUL byte, which PostgreSQL cannot "
                f"store ({count} such values in this batch); set nul_bytes: replace to substitute nul_replacement"
            )
        self.replaced += count
        return pc.replace_substring(arr, needle, swap)


def _to_copy_columns(batch: pa.RecordBatch, columns: list[ColumnPlan], nuls: NulPolicy) -> pa.Table:
    arrays = [
        _bytea_hex(batch.column(i)) if col.encoding == "binary" else nuls.apply(batch, i, col, batch.column(i))
        for i, col in enumerate(columns)
    ]
    return pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])


def _csv_chunks(
    batches: Iterable[pa.RecordBatch], columns: list[ColumnPlan], counter: list[int], nuls: NulPolicy
) -> Iterator[bytes]:
    options = pacsv.WriteOptions(include_header=False, batch_size=16_384)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if batch.num_columns != len(columns):
            raise DatacopyError(f"Snowflake returned {batch.num_columns} columns, the plan has {len(columns)}")
        sink = pa.BufferOutputStream()
        pacsv.write_csv(_to_copy_columns(batch, columns, nuls), sink, options)
        counter[0] += batch.num_rows
        yield sink.getvalue().to_pybytes()


def _copy_batches(
    cur: psycopg.Cursor[Any],
    target: sql.Identifier,
    columns: list[ColumnPlan],
    batches: Iterable[pa.RecordBatch],
    nuls: NulPolicy,
) -> tuple[int, int]:
    """COPY the batches into the target; returns (rows, bytes sent)."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        target, sql.SQL(", ").join(sql.Identifier(c.target_name) for c in columns)
    )
    rows, nbytes = [0], 0
    with cur.copy(statement) as copy:
        for data in _csv_chunks(batches, columns, rows, nuls):
            copy.write(data)
            nbytes += len(data)
    if cur.rowcount >= 0 and cur.rowcount != rows[0]:
        raise DatacopyError(f"PostgreSQL stored {cur.rowcount} rows of the {rows[0]} sent")
    return rows[0], nbytes


def describe_error(exc: BaseException) -> str:
    """One line for the ledger and the user, with secrets masked."""
    if isinstance(exc, DatacopyError):
        return redact(str(exc))
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return "the chunk is locked by another worker that is still running; retry after it ends or times out"
    if isinstance(exc, (psycopg.errors.QueryCanceled, psycopg.errors.IdleInTransactionSessionTimeout)):
        return f"PostgreSQL ended the chunk's transaction after its timeout: {str(exc).splitlines()[0]}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {text}"[:1000])
