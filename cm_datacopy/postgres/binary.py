"""Arrow record batches → ``COPY … FROM STDIN (FORMAT binary)``, a column at a time, by pgpq.

Binary COPY sends each value in PostgreSQL's own wire form, so the server parses no text: about
half the CPU of CSV on the server and none of the client's CSV formatting. The wire form must be
exactly the target column's type (an ``int2`` sent to an ``integer`` column is refused), so every
column is cast to one Arrow type chosen from the target column's type before pgpq encodes it;
Snowflake sizes a chunk's integers per result batch (int8 in one, int32 in the next), and casts
that widen are exact. Where no wire form is listed here (PostGIS types take text EWKT, not WKB),
the table is copied in CSV (``encoder.choose_encoder``).

Exactness, checked value by value in ``cm_datacopy_tests/test_binary_copy.py``: numeric from
decimal128 up to 38 digits at any scale, timestamps in microseconds (instants as UTC), dates from
0001 to 9999, time, bytea, jsonb (pgpq writes its version byte), floats with NaN and ±inf, nulls.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pgpq
import pyarrow as pa
import pyarrow.compute as pc
from pgpq import encoders as pgpq_encoders
from pgpq import schema as pgpq_schema
from psycopg import sql

from cm_datacopy.errors import DatacopyError
from cm_datacopy.typeplan import ColumnPlan

_NUMERIC = re.compile(r"numeric(?:\((\d+),(\d+)\))?$")
_VARCHAR = re.compile(r"character varying(\(\d+\))?$")


@dataclass(frozen=True)
class _Wire:
    """One column's Arrow type on the wire and the pgpq builder that writes it."""

    arrow: pa.DataType
    builder: Callable[[pa.Field], object]


def _text(output: object | None = None) -> Callable[[pa.Field], object]:
    if output is None:
        return pgpq_encoders.LargeStringEncoderBuilder
    return lambda field: pgpq_encoders.LargeStringEncoderBuilder.new_with_output(field, output)


def wire_type(column: ColumnPlan, target_type: str | None = None) -> _Wire | None:
    """The wire form of ``column`` for a target column of ``target_type`` (the planned type if None).

    None: binary COPY cannot write it here, so its table goes as CSV.
    """
    pg = target_type or column.pg_type
    simple = {
        "smallint": _Wire(pa.int16(), pgpq_encoders.Int16EncoderBuilder),
        "integer": _Wire(pa.int32(), pgpq_encoders.Int32EncoderBuilder),
        "bigint": _Wire(pa.int64(), pgpq_encoders.Int64EncoderBuilder),
        "double precision": _Wire(pa.float64(), pgpq_encoders.Float64EncoderBuilder),
        "boolean": _Wire(pa.bool_(), pgpq_encoders.BooleanEncoderBuilder),
        "date": _Wire(pa.date32(), pgpq_encoders.Date32EncoderBuilder),
        "time without time zone": _Wire(pa.time64("us"), pgpq_encoders.Time64MicrosecondEncoderBuilder),
        "timestamp without time zone": _Wire(pa.timestamp("us"), pgpq_encoders.TimestampMicrosecondEncoderBuilder),
        "timestamp with time zone": _Wire(
            pa.timestamp("us", tz="UTC"), pgpq_encoders.TimestampMicrosecondEncoderBuilder
        ),
        "bytea": _Wire(pa.large_binary(), pgpq_encoders.LargeBinaryEncoderBuilder),
        "text": _Wire(pa.large_string(), _text()),
        "json": _Wire(pa.large_string(), _text()),  # json's binary form is its text
        "jsonb": _Wire(pa.large_string(), _text(pgpq_schema.Jsonb())),
    }
    if pg in simple:
        return simple[pg]
    if _VARCHAR.match(pg):
        return simple["text"]  # varchar_recv checks the length as the text input does
    if _NUMERIC.match(pg):
        # The scale is the planned one (the source's); the target applies its own typmod as with text.
        planned = _NUMERIC.match(column.pg_type)
        scale = int(planned.group(2)) if planned and planned.group(2) else 0
        return _Wire(pa.decimal128(38, scale), pgpq_encoders.Decimal128EncoderBuilder)
    return None


def _cast(arr: pa.Array, to: pa.DataType, column: ColumnPlan) -> pa.Array:
    """``arr`` as the wire type; every cast here is exact, or it raises."""
    if arr.type == to:
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), to)
    if pa.types.is_decimal(to) and pa.types.is_floating(arr.type):
        # Never round a float into numeric: the session reads NUMBER as decimal (arrow_number_to_decimal).
        raise DatacopyError(f"column {column.source_name!r} arrived as {arr.type}, not an exact number")
    if pa.types.is_timestamp(to) and pa.types.is_timestamp(arr.type):
        if to.tz is not None and arr.type.tz is None:
            # A naive value for a timestamptz column: PostgreSQL would read its text in the session's
            # zone, which is no exact instant; the session sends instants with their zone.
            raise DatacopyError(f"column {column.source_name!r} arrived without a time zone ({arr.type})")
        if to.tz is None and arr.type.tz is not None:
            arr = arr.cast(pa.timestamp(arr.type.unit))  # the wall clock as UTC, as its CSV text was
        if arr.type.unit == "ns":
            return _floor_micros(arr).cast(to)
    if pa.types.is_time(to) and pa.types.is_time(arr.type) and arr.type.unit == "ns":
        return _floor_micros(arr).cast(to)
    return arr.cast(to)  # safe: overflow or lost digits raise


def _floor_micros(arr: pa.Array) -> pa.Array:
    """Nanoseconds as whole microseconds, the digits below dropped as the checksum drops them.

    Towards the past, not towards zero (Arrow's unsafe cast): 1969-12-31 23:59:59.999999999 stays in 1969.
    """
    unit = pa.timestamp("us", tz=arr.type.tz) if pa.types.is_timestamp(arr.type) else pa.time64("us")
    ns = arr.cast(pa.int64())
    micros = pc.divide(ns, 1000)  # integer division, towards zero
    below = pc.less(pc.subtract(ns, pc.multiply(micros, 1000)), 0)
    return pc.subtract(micros, pc.cast(below, pa.int64())).cast(unit)


class BinaryEncoder:
    """COPY in PostgreSQL's binary format, written by pgpq's Rust encoder (no per-row Python)."""

    format = "binary"

    def __init__(self, columns: list[ColumnPlan], target_types: dict[str, str] | None = None) -> None:
        self.columns = columns
        types = target_types or {}
        wires = [wire_type(c, types.get(c.target_name)) for c in columns]
        if any(w is None for w in wires):
            missing = [c.target_name for c, w in zip(columns, wires, strict=True) if w is None]
            raise ValueError(f"no binary wire form for columns {missing}")
        self._wires: list[_Wire] = wires  # type: ignore[assignment]
        names = [f"c{i}" for i in range(len(columns))]
        self._schema = pa.schema([pa.field(n, w.arrow) for n, w in zip(names, self._wires, strict=True)])
        self._pgpq = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(
            self._schema, {f.name: w.builder(f) for f, w in zip(self._schema, self._wires, strict=True)}
        )
        self._started = False

    def statement(self, target: sql.Identifier) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            target, sql.SQL(", ").join(sql.Identifier(c.target_name) for c in self.columns)
        )

    def _header(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._pgpq.write_header()

    def encode(self, batch: pa.RecordBatch) -> bytes:
        arrays = [
            _cast(batch.column(i), wire.arrow, col)
            for i, (col, wire) in enumerate(zip(self.columns, self._wires, strict=True))
        ]
        head = self._header()  # pgpq writes no row before its header
        body = self._pgpq.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        return head + body if head else body

    def trailer(self) -> bytes:
        return self._header() + self._pgpq.finish()
