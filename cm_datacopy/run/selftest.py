"""Before a run moves a row: do both databases write the same canonical text for what it will copy?

The checksum compares texts written by two SQL dialects (``checksum.CANONICAL``). How a real account
prints a decimal, converts an offset or drops a digit below the microsecond can only be seen on that
account, so every run (new or resumed) asks it first. One Snowflake query casts text literals of edge
values to every planned column type (full-scale NUMBER, NaN and ±inf, -0.0, sub-microsecond
timestamps, +05:30 and -08:00 offsets, 0001-01-01, binary, unicode, NULL) and returns each value as
a chunk's SELECT returns it, with its canonical cell text and that text's hash.

The values then travel as a chunk's rows do: the Arrow batches Snowflake returned, an ordinal added
in Arrow, encoded by the encoder the copy chooses for the planned type (``choose_encoder``: binary
COPY where the type has a wire form, CSV where the copy falls back) and written by the copy's own
``copy_batches`` into a scratch table of that type. PostgreSQL then writes its text and hash of
each stored value, read back in the ordinal's order. A difference, or a value the encoder or
PostgreSQL refuses, stops the run with one message naming the type (with the value, and both texts
where both were written). Nothing is written on either side: Snowflake runs a SELECT, and each
scratch table lives in a PostgreSQL transaction that is rolled back. The scratch table goes in the
ledger schema (created inside that transaction if the run has not created it yet), not in
``pg_temp``: the run needs CREATE there anyway, while the TEMPORARY privilege is one a hardened
database may not grant.

The encoder is chosen per type, from the planned type: the copy chooses per table, from the
target's columns, so a type sharing a table with a column that has no binary form goes as CSV there.
The stand-in holds NUMBER(38,0) as a 64-bit integer: there, integers beyond int64 are left out.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from cm_datacopy import checksum
from cm_datacopy.errors import DatacopyError, PlanError
from cm_datacopy.postgres.encoder import choose_encoder, copy_batches
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.snowflake.scan import arrow_batches, select_expr
from cm_datacopy.snowflake.session import Session, is_retryable_error
from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy.typeplan import ColumnPlan

log = logging.getLogger(__name__)


class SelfTestError(PlanError):
    """The two databases write different canonical text for one planned type: chunks could never verify."""


_TEXTS = [
    "Zoë 🚀 日本語 ελληνικά",
    "",
    "quote ' \" , | : v1:n n",
    "line1\nline2\r\n\ttab",
    "back\\slash \\N",
]
_FLOATS = ["NaN", "inf", "-inf", "-0.0", "5e-324", "1.7976931348623157e308", "0.1", "-1e-7", "123456.7890123"]
_DATES = ["0001-01-01", "9999-12-31", "1969-12-31", "2000-02-29"]
_TIMES = ["00:00:00", "23:59:59.999999999", "12:00:00.0000005"]
_NTZ = [
    "0001-01-01T00:00:00",
    "1600-01-01T00:00:00.123456789",
    "1969-12-31T23:59:59.999999999",
    "2024-03-10T02:30:00.0000005",
    "2300-12-31T23:59:59.999999999",
    "9999-12-31T23:59:59.999999",
]
_TZ = [
    "2024-01-01T10:00:00.123456789+05:30",
    "2024-06-01T10:00:00.999999999-08:00",
    "0001-01-01T05:30:00+05:30",
    "1650-07-01T12:00:00.999999999-08:00",
    "1969-12-31T23:59:59.9999999+00:00",
    "9999-12-31T15:59:59.999999-08:00",
]
_BINARY_HEX = ["", "00FF7F80", "5C78"]
_JSON = ['{"k": "ü", "n": 1.5, "a": [1, null]}', '[1, "two", {"x": true}]']
_SPATIAL = ["POINT(1 2)", "LINESTRING(0 0, 1 1)"]
_INT64_MAX = 2**63 - 1


def _number_bounds(snowflake_type: str) -> tuple[int, int]:
    m = re.fullmatch(r"NUMBER\((\d+),(\d+)\)", snowflake_type)
    assert m is not None, snowflake_type
    return int(m.group(1)), int(m.group(2))


def edge_values(col: ColumnPlan, dialect: str) -> list[str]:
    """Text literals (Snowflake's AUTO input formats; hex for binary) of edge values of ``col``'s type."""
    kind = checksum.canonical_kind(col)
    if kind == "integer":
        p, _ = _number_bounds(col.snowflake_type)
        top = 10**p - 1 if dialect != "standin" else min(10**p - 1, _INT64_MAX)
        return [str(top), str(-top), "0", "1"]
    if kind == "decimal":
        p, s = _number_bounds(col.snowflake_type)
        full = ("9" * (p - s) or "0") + "." + "9" * s
        tiny = "0." + "0" * (s - 1) + "1"
        return [full, "-" + full, tiny, "-" + tiny, "0.5", "-0.5", "0"]
    if kind == "text":
        m = re.fullmatch(r"VARCHAR\((\d+)\)", col.snowflake_type)
        limit = int(m.group(1)) if m else None
        return [t[:limit] for t in _TEXTS]
    return {
        "float": _FLOATS,
        "boolean": ["true", "false"],
        "date": _DATES,
        "time": _TIMES,
        "timestamp": _NTZ,
        "timestamptz": _TZ,
        "binary": _BINARY_HEX,
        "json": _SPATIAL if col.snowflake_type in ("GEOGRAPHY", "GEOMETRY") else _JSON,
    }[kind]


def _snowflake_value(col: ColumnPlan, text: str) -> str:
    """The Snowflake expression turning a text literal into a value of ``col``'s type."""
    t = col.snowflake_type
    if t == "BINARY":
        return f"TO_BINARY({text}, 'HEX')"
    if t == "VARIANT":
        return f"PARSE_JSON({text})"
    if t in ("OBJECT", "ARRAY"):
        return f"PARSE_JSON({text})::{t}"
    if t in ("GEOGRAPHY", "GEOMETRY"):
        return f"TO_{t}({text})"
    return f"CAST({text} AS {t})"


@dataclass(frozen=True)
class _Probe:
    """One planned type under test, as column ``C<i>``."""

    column: ColumnPlan
    values: list[str]

    @property
    def label(self) -> str:
        return f"{self.column.snowflake_type} (PostgreSQL {self.column.pg_type})"


def _probes(columns: list[ColumnPlan], dialect: str) -> list[_Probe]:
    kinds: dict[tuple[str, str, str], ColumnPlan] = {}
    for col in columns:
        kinds.setdefault((col.snowflake_type, col.pg_type, col.encoding), col)
    return [
        _Probe(replace(col, source_name=f"C{i}", target_name=f"c{i}", nullable=True), edge_values(col, dialect))
        for i, col in enumerate(kinds.values())
    ]


def _snowflake_sql(probes: list[_Probe], dialect: str) -> tuple[str, list[Any]]:
    """One query: each row an edge value per type (NULL once values run out, and a last row of NULLs)."""
    rows = max(len(p.values) for p in probes) + 1
    params: list[Any] = []
    tuples = []
    for r in range(rows):
        cells = [str(r)]
        for p in probes:
            if r < len(p.values):
                cells.append("?")
                params.append(p.values[r])
            else:
                cells.append("NULL")
        tuples.append(f"({', '.join(cells)})")
    names = ", ".join(f"S{i}" for i in range(len(probes)))
    casts = ", ".join(
        f"{_snowflake_value(p.column, f'S{i}')} AS {sf_ident(p.column.source_name)}" for i, p in enumerate(probes)
    )
    outputs = ["ID"]
    for i, p in enumerate(probes):
        cell = checksum.snowflake_cell(p.column)
        outputs += [
            f"{select_expr(p.column)} AS {sf_ident(p.column.source_name)}",
            f"{cell} AS T{i}",
            f"{checksum.snowflake_hash(cell, dialect)} AS H{i}",
        ]
    statement = (
        f"WITH v AS (SELECT ID, {casts} FROM (VALUES {', '.join(tuples)}) AS t(ID, {names})) "
        f"SELECT {', '.join(outputs)} FROM v ORDER BY ID"
    )
    return statement, params


_ORDINAL = ColumnPlan("ORDINAL", "ordinal", "NUMBER(18,0)", "bigint", False)


@dataclass(frozen=True)
class _Rendered:
    text: str  # Snowflake's canonical cell text
    hash: int


@dataclass
class _Delivered:
    """One type's edge values as Snowflake returned them (Arrow, batch by batch), and what it wrote of each."""

    batches: list[pa.RecordBatch] = field(default_factory=list)  # (ordinal, value): a chunk's rows of one column
    rendered: list[_Rendered] = field(default_factory=list)


def _snowflake_side(session: Session, probes: list[_Probe]) -> list[_Delivered]:
    """Per type: its values as the copy reads a chunk's rows, and what Snowflake wrote of each."""
    statement, params = _snowflake_sql(probes, session.dialect)
    out = [_Delivered() for _ in probes]
    for batch in arrow_batches(session.execute(statement, params)):
        for i, delivered in enumerate(out):
            values, texts, hashes = (batch.column(1 + 3 * i + k) for k in range(3))
            first = len(delivered.rendered)
            # The ordinal is filled here, in Arrow, so PostgreSQL's texts are read back in Snowflake's order.
            ordinal = pa.array(range(first, first + batch.num_rows), pa.int64())
            delivered.batches.append(pa.record_batch([ordinal, values], names=["ordinal", "value"]))
            delivered.rendered += [_Rendered(texts[r].as_py(), int(hashes[r].as_py())) for r in range(batch.num_rows)]
    return out


# What a refused COPY raises: PostgreSQL refusing a value or the type, the encoder or Arrow refusing a value
# (a lost connection is none of these: it propagates, and the caller retries).
_REFUSALS = (psycopg.DataError, psycopg.ProgrammingError, DatacopyError, ValueError)


def _postgres_side(
    pg: psycopg.Connection[Any], probe: _Probe, batches: list[pa.RecordBatch], ledger: Ledger
) -> list[tuple[str, int]]:
    """COPY the values as a chunk's rows go, then read PostgreSQL's canonical text and hash of each, in order.

    The encoder is the one the copy chooses for the type (binary, or CSV where it has no binary form);
    the table is a scratch one of the planned type in the ledger schema, in a transaction rolled back: nothing
    is written. Its name holds the process id, so two runs starting at once never wait on each other.
    """
    encoder = choose_encoder([_ORDINAL, probe.column])
    log.debug("checksum self-test of %s: COPY in %s format", probe.label, encoder.format)
    value = sql.Identifier(probe.column.target_name)
    cell = checksum.postgres_cell(probe.column, value)
    with pg.transaction() as tx, pg.cursor() as cur:
        table = sql.Identifier(ledger.scratch_schema(cur), f"cm_datacopy_selftest_{os.getpid()}")
        cur.execute(
            sql.SQL("CREATE TABLE {} ({} bigint, {} {})").format(
                table, sql.Identifier(_ORDINAL.target_name), value, sql.SQL(probe.column.pg_type)
            )
        )
        copy_batches(cur, table, encoder, batches)
        cur.execute(
            sql.SQL("SELECT {}, {} FROM {} ORDER BY {}").format(
                cell, checksum.postgres_hash(cell), table, sql.Identifier(_ORDINAL.target_name)
            )
        )
        rows = [(text, int(number)) for text, number in cur.fetchall()]
        raise psycopg.Rollback(tx)  # the scratch table (and schema) go with the transaction
    return rows


def _copy_format(probe: _Probe) -> str:
    """``binary`` or ``csv``: how the copy sends the type."""
    return choose_encoder([_ORDINAL, probe.column]).format


def _refused_value(
    pg: psycopg.Connection[Any], probe: _Probe, batches: list[pa.RecordBatch], ledger: Ledger
) -> int | None:
    """The ordinal of the first value the COPY refuses on its own (None: the type itself, or only together)."""
    try:
        _postgres_side(pg, probe, [], ledger)  # no value at all: is it the type (one PostgreSQL lacks, say)?
    except _REFUSALS:
        return None
    for batch in batches:
        for r in range(batch.num_rows):
            try:
                _postgres_side(pg, probe, [batch.slice(r, 1)], ledger)
            except _REFUSALS:
                return int(batch.column(0)[r].as_py())
    return None


def check(session: Session, pg: psycopg.Connection[Any], columns: list[ColumnPlan], ledger: Ledger) -> None:
    """Stop the run (``SelfTestError``) if the databases write any planned type's edge values differently.

    ``ledger``: its schema holds the scratch tables. A missing privilege there is no
    finding of the self-test: it propagates, as the run would meet it next.
    """
    probes = _probes(columns, session.dialect)
    if not probes:
        return
    try:
        snowflake = _snowflake_side(session, probes)
    except Exception as exc:
        if is_retryable_error(exc):  # the network or the session, not the SQL: the caller retries
            raise
        raise SelfTestError(_refused(session, probes, exc)) from None
    problems = []
    for probe, delivered in zip(probes, snowflake, strict=True):
        literals = [*probe.values, *[None] * (len(delivered.rendered) - len(probe.values))]
        try:
            theirs = _postgres_side(pg, probe, delivered.batches, ledger)
        except psycopg.errors.InsufficientPrivilege:
            raise
        except _REFUSALS as exc:
            where = _refused_value(pg, probe, delivered.batches, ledger)
            shown = "" if where is None else f", value {_shown(literals[where])}"
            problems.append(
                f"{probe.label}{shown}: the values Snowflake delivers cannot be copied "
                f"({_copy_format(probe)} COPY): {_first_line(exc)}"
            )
            continue
        for literal, ours, (text, number) in zip(literals, delivered.rendered, theirs, strict=True):
            shown = _shown(literal)
            if ours.text != text:
                problems.append(
                    f"{probe.label}, value {shown}: Snowflake writes {ours.text!r}, PostgreSQL writes {text!r}"
                )
                break
            if ours.hash != number:
                problems.append(
                    f"{probe.label}, value {shown}: both write {text!r} but hash it differently "
                    f"(Snowflake {ours.hash}, PostgreSQL {number})"
                )
                break
    if problems:
        raise SelfTestError(
            "checksum self-test failed before any row moved; chunks holding such values could never verify. "
            + "; ".join(problems)
            + ". Nothing was written: report this with the Snowflake and PostgreSQL versions"
        )


def _refused(session: Session, probes: list[_Probe], exc: Exception) -> str:
    """Snowflake refused the query, or its result could not be read: find the type, one query each."""
    for probe in probes:
        try:
            _snowflake_side(session, [probe])
        except Exception as each:
            return (
                f"checksum self-test failed before any row moved: Snowflake cannot write or deliver {probe.label}: "
                f"{_first_line(each)}"
            )
    return f"checksum self-test failed before any row moved: {_first_line(exc)}"


def _shown(literal: str | None) -> str:
    return "NULL" if literal is None else repr(literal)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
