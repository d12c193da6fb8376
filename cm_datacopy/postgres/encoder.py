"""Arrow record batches → ``COPY … FROM STDIN``: how a chunk's rows enter PostgreSQL.

The encoder turns each batch into COPY data without per-row Python; the caller writes it into a
``COPY`` of its own transaction, so the rows commit together with the chunk's ledger row.
``BinaryEncoder`` (``postgres/binary.py``) writes PostgreSQL's binary format, the fastest; a table
with a column it has no wire form for goes as CSV, by ``CsvEncoder`` (Arrow's C++ CSV writer, bytea
as hex text encoded with numpy). ``choose_encoder`` picks one per table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.binary import BinaryEncoder, wire_type
from cm_datacopy.postgres.prefetch import Prefetch
from cm_datacopy.typeplan import ColumnPlan

log = logging.getLogger(__name__)

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_PAIRS = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 15]], axis=1)


def bytea_hex(arr: pa.Array) -> pa.Array:
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


class CsvEncoder:
    """COPY in CSV format, written by Arrow's C++ CSV writer."""

    format = "csv"

    def __init__(self, columns: list[ColumnPlan]) -> None:
        self.columns = columns
        self._options = pacsv.WriteOptions(include_header=False, batch_size=16_384)

    def statement(self, target: sql.Identifier) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            target, sql.SQL(", ").join(sql.Identifier(c.target_name) for c in self.columns)
        )

    def encode(self, batch: pa.RecordBatch) -> bytes:
        arrays = [
            bytea_hex(batch.column(i)) if col.encoding == "binary" else batch.column(i)
            for i, col in enumerate(self.columns)
        ]
        sink = pa.BufferOutputStream()
        table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
        pacsv.write_csv(table, sink, self._options)
        return sink.getvalue().to_pybytes()

    def trailer(self) -> bytes:
        return b""


class Encoder(Protocol):
    """The seam between Arrow batches and a COPY: its statement, each batch's data, the closing bytes."""

    format: str
    columns: list[ColumnPlan]

    def statement(self, target: sql.Identifier) -> sql.Composed: ...

    def encode(self, batch: pa.RecordBatch) -> bytes: ...

    def trailer(self) -> bytes: ...


def target_types(cur: psycopg.Cursor[Any], target: sql.Identifier) -> dict[str, str]:
    """The target's column types as ``format_type`` prints them (an existing table may be wider than planned)."""
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (target.as_string(cur),),
    )
    return {name: typ for name, typ in cur.fetchall()}


def choose_encoder(columns: list[ColumnPlan], types: dict[str, str] | None = None, prefer: str = "binary") -> Encoder:
    """Binary COPY when every column has a binary wire form for its target type, else CSV.

    ``types``: the target's actual column types (``target_types``), where they may differ from the plan.
    """
    types = types or {}
    if prefer == "binary":
        unsupported = [c.target_name for c in columns if wire_type(c, types.get(c.target_name)) is None]
        if not unsupported:
            return BinaryEncoder(columns, types)
        log.debug("COPY as CSV: no binary form for column(s) %s", ", ".join(unsupported))
    return CsvEncoder(columns)


def encoder_for(cur: psycopg.Cursor[Any], target: sql.Identifier, columns: list[ColumnPlan]) -> Encoder:
    """The best encoder for COPYing ``columns`` into the existing table ``target``."""
    return choose_encoder(columns, target_types(cur, target))


def copy_batches(
    cur: psycopg.Cursor[Any],
    target: sql.Identifier,
    encoder: Encoder,
    batches: Iterable[pa.RecordBatch],
    prepare: Callable[[pa.RecordBatch], pa.RecordBatch] = lambda b: b,
) -> tuple[int, int]:
    """COPY the batches into ``target`` (``prepare`` runs on each batch first); returns (rows, bytes sent).

    The next batch is fetched, prepared and encoded on a helper thread while this one writes the
    current one into the COPY (``Prefetch``): reading Snowflake, encoding and PostgreSQL's parsing
    overlap instead of taking turns. Whatever the helper raises is raised here.
    """
    rows = nbytes = 0
    columns = len(encoder.columns)

    def encoded(batch: pa.RecordBatch) -> tuple[int, bytes] | None:
        if batch.num_rows == 0:
            return None
        if batch.num_columns != columns:
            raise DatacopyError(f"Snowflake returned {batch.num_columns} columns, the plan has {columns}")
        return batch.num_rows, encoder.encode(prepare(batch))

    with cur.copy(encoder.statement(target)) as copy, Prefetch(batches, encoded) as pieces:
        for n, data in pieces:
            copy.write(data)
            rows += n
            nbytes += len(data)
        if tail := encoder.trailer():
            copy.write(tail)
            nbytes += len(tail)
    if cur.rowcount >= 0 and cur.rowcount != rows:
        raise DatacopyError(f"PostgreSQL stored {cur.rowcount} rows of the {rows} sent")
    log.debug("COPY %s: %d rows, %d bytes in %s format", target.as_string(cur), rows, nbytes, encoder.format)
    return rows, nbytes
