"""Chunk boundaries from histograms of the key: aggregate passes over one column, no global sort.

A ``ROW_NUMBER() OVER (ORDER BY key)`` over a billion-row table sorts it all in one window (and
spills); these are a few scans of the key column alone. Contract: sorted, distinct key values
b1 < ... < bn of the key's Python type; the chunks are ``key < b1 OR key IS NULL``,
``b1 <= key < b2``, ..., ``bn <= key`` (``cm_datacopy.ranges``). Every boundary is a key value read
from the table, and no chunk holds more than ``chunk_size`` rows unless one key value (or the
NULLs) does: that chunk is logged.

Algorithm
---------
1. One statistics query: ``COUNT(*)``, ``COUNT(k)``, ``MIN(k)``, ``MAX(k)`` (plus, for FLOAT keys,
   the finite range and the rows at -inf / +inf / NaN). On Snowflake these are answered from
   micro-partition metadata when no filter applies.
2. The non-NULL keys form one *cell* [MIN, MAX] with a known row count. A cell holding more than
   ``chunk_size`` rows and more than one distinct value is *over-full*.
3. Refinement rounds, one query each: every over-full cell is cut into equal-width buckets of a
   monotone numeric image x of the key (the key itself, days or microseconds from the cell's
   lowest key), and the query returns per non-empty bucket ``COUNT(*)``, ``MIN(k)``, ``MAX(k)``
   (``FLOOR(x / width) ... GROUP BY``: a hash aggregate whose result has one row per non-empty
   bucket). Each bucket becomes a new cell [MIN, MAX]: its range shrinks to the keys actually
   present, so a sparse range (ids 1, 2, 10^15) collapses in one round. Adjacent over-full cells of
   similar density share one width and one CASE branch (a *run*); one query serves up to
   ``MAX_RUNS`` runs. Cells stop being refined when they fit ``chunk_size`` or hold a single value.
4. Cells that a round could not split (the image x lost resolution: far from the run's origin, or
   sub-microsecond timestamps) are refined once more alone; if that fails too, their distinct
   values are counted exactly (``GROUP BY k``).
5. The final cells are disjoint, ordered and their counts exact, so a greedy walk merges adjacent
   cells into chunks of at most ``chunk_size`` rows (NULL keys count towards the first chunk) and
   cuts at the lowest key of the next cell. A single key value (or the NULLs) holding more than
   ``chunk_size`` rows cannot be split; it becomes a chunk of its own and is reported.

Identifiers are quoted; every value is bound with ``?``. Every query starts
``WITH "src" AS (SELECT <key> AS "k" FROM <table> AT(…) WHERE TRUE)`` from the run's ``Scan``, so
the Time Travel clause (and its parameter, first) applies to all reads.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cm_datacopy.snowflake.scan import Scan, bind_key
from cm_datacopy.snowflake.session import Session
from cm_datacopy.snowflake.sql import sf_ident

log = logging.getLogger(__name__)

OVERSAMPLE = 16  # buckets per chunk_size rows in a refined cell (uniform data: cells ~ chunk_size/16)
MIN_SPLIT = 1024  # an over-full cell is cut into at least this many buckets (sparse and skewed keys converge faster)
MAX_RUNS = 64  # CASE branches per query
MAX_ROUNDS = 24  # refinement queries before giving up (cells left over-full are reported)
ROW_CAP_MIN = 200_000  # estimated result rows per refinement query (at least)
_MAXF = 1.7976931348623157e308


@dataclass
class Cell:
    """Rows with lo <= key <= hi (both keys present in the table); no other cell overlaps."""

    count: int
    lo: Any
    hi: Any
    splittable: bool = True  # False: one value, or the special float values
    stalls: int = 0  # rounds that returned this cell unchanged

    @property
    def single(self) -> bool:
        return not self.splittable or self.lo == self.hi


@dataclass
class Plan:
    boundaries: list[Any]
    chunk_rows: list[int]  # exact rows per chunk at the time of planning (first includes NULLs)
    rows: int
    null_rows: int
    queries: int
    rounds: int
    seconds: float
    oversize: list[tuple[Any, Any, int]] = field(default_factory=list)  # (lo, hi, rows) chunks > chunk_size
    notes: list[str] = field(default_factory=list)


class _Kind:
    """How one key kind is bound, and its monotone numeric image x(k) = offset from an origin."""

    def __init__(self, kind: str):
        if kind not in ("int", "decimal", "float", "date", "timestamp", "timestamptz"):
            raise ValueError(f"unsupported key kind {kind!r}")
        self.kind = kind

    def param(self, value: Any) -> tuple[str, Any]:
        """A placeholder and its parameter for a key value."""
        return bind_key(self.kind, value)

    def between(self, lo: Any, hi: Any) -> tuple[str, list[Any]]:
        """SQL for lo <= k <= hi, and its parameters.

        Timestamps are read back at microsecond precision (the connector truncates nanoseconds), so
        the upper end is "before the next microsecond": no row of hi's microsecond is left out.
        """
        ph_lo, p_lo = self.param(lo)
        if self.kind in ("timestamp", "timestamptz") and hi < hi.max.replace(tzinfo=hi.tzinfo):
            ph_hi, p_hi = self.param(hi + dt.timedelta(microseconds=1))
            return f'("k" >= {ph_lo} AND "k" < {ph_hi})', [p_lo, p_hi]
        ph_hi, p_hi = self.param(hi)
        return f'("k" BETWEEN {ph_lo} AND {ph_hi})', [p_lo, p_hi]

    def image(self, origin: Any) -> tuple[str, list[Any]]:
        """SQL for x(k) >= 0 for k >= origin, non-decreasing in k, and its parameters."""
        k = self.kind
        if k in ("int", "decimal"):
            ph, p = self.param(origin)
            return f'CAST("k" - {ph} AS DOUBLE)', [p]
        if k == "float":
            # halves: no overflow between -MAX and +MAX; both steps are monotone in IEEE arithmetic
            return '("k" * 0.5 - ?)', [float(origin) * 0.5]
        if k == "date":
            ph, p = self.param(origin)
            return f'DATEDIFF(day, {ph}, "k")', [p]
        if k == "timestamp":
            ph, p = self.param(origin)
            return f'DATEDIFF(microsecond, {ph}, "k")', [p]
        # TIMESTAMP_TZ: compare instants; both sides as UTC wall time without offset
        utc = (origin if origin.tzinfo else origin.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        return (
            "DATEDIFF(microsecond, CAST(? AS TIMESTAMP_NTZ), CAST(CONVERT_TIMEZONE('UTC', \"k\") AS TIMESTAMP_NTZ))",
            [utc.replace(tzinfo=None).isoformat(sep=" ")],
        )

    def span(self, lo: Any, hi: Any) -> float:
        """x(hi) with origin lo, computed here (only sizes buckets; correctness does not depend on it)."""
        k = self.kind
        if k in ("int", "decimal"):
            return float(hi - lo)
        if k == "float":
            return float(hi) * 0.5 - float(lo) * 0.5
        if k == "date":
            return float((hi - lo).days)
        if k == "timestamptz":
            lo = lo if lo.tzinfo else lo.replace(tzinfo=dt.UTC)
            hi = hi if hi.tzinfo else hi.replace(tzinfo=dt.UTC)
        return (hi - lo) / dt.timedelta(microseconds=1)

    @property
    def integral(self) -> bool:
        """x takes integer values: a width below 1 gains nothing."""
        return self.kind in ("int", "date", "timestamp", "timestamptz")


class _Source:
    """The key column of the scanned table, queried through one session."""

    def __init__(self, session: Session, scan: Scan, key_column: str) -> None:
        self.session = session
        from_where, self.scan_params = scan.from_where()
        self.src = f'WITH "src" AS (SELECT {sf_ident(key_column)} AS "k" {from_where})'
        self.ref = scan.table
        self.queries = 0

    def run(self, body: str, params: list[Any]) -> list[tuple[Any, ...]]:
        self.queries += 1
        return self.session.execute(f"{self.src} {body}", [*self.scan_params, *params]).fetchall()


def chunk_boundaries(session: Session, scan: Scan, key_column: str, key_kind: str, chunk_size: int) -> list[Any]:
    """Sorted distinct boundary values for chunks of at most ~chunk_size rows (see the module's doc)."""
    return plan(session, scan, key_column, key_kind, chunk_size).boundaries


def plan(session: Session, scan: Scan, key_column: str, key_kind: str, chunk_size: int) -> Plan:
    """The boundaries with what is known about them: exact chunk sizes, oversize chunks, query count."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    started = time.monotonic()
    kind = _Kind(key_kind)
    s = _Source(session, scan, key_column)
    rows, nulls, cells = _statistics(s, kind)
    rounds = 0
    notes: list[str] = []
    if rows > chunk_size:
        rounds = _refine(s, kind, cells, chunk_size, rows, notes)
    boundaries, chunk_rows, oversize = _merge(cells, nulls, chunk_size)
    result = Plan(boundaries, chunk_rows, rows, nulls, s.queries, rounds, time.monotonic() - started, oversize, notes)
    for lo, hi, n in oversize:
        what = "NULL keys" if lo is None else (f"key value {lo!r}" if lo == hi else f"keys {lo!r}..{hi!r}")
        log.warning(
            "%s: %s hold %d rows, more than chunk_size %d; that chunk cannot be split", s.ref, what, n, chunk_size
        )
    return result


def _statistics(s: _Source, kind: _Kind) -> tuple[int, int, list[Cell]]:
    """Total rows, NULL keys, and the initial cells (one, or for FLOAT up to three)."""
    if kind.kind != "float":
        total, nonnull, lo, hi = s.run('SELECT COUNT(*), COUNT("k"), MIN("k"), MAX("k") FROM "src"', [])[0]
        cells = [Cell(int(nonnull), lo, hi)] if nonnull else []
        return int(total), int(total) - int(nonnull), cells
    # FLOAT: -inf sorts first, +inf then NaN last (Snowflake: NaN is greater than every other value)
    finite = '"k" BETWEEN ? AND ?'
    row = s.run(
        'SELECT COUNT(*), COUNT("k"), '
        f'MIN(CASE WHEN {finite} THEN "k" END), MAX(CASE WHEN {finite} THEN "k" END), '
        'COUNT(CASE WHEN "k" < ? THEN 1 END), COUNT(CASE WHEN "k" > ? THEN 1 END), '
        'MIN(CASE WHEN "k" > ? THEN "k" END), MAX("k") FROM "src"',
        [-_MAXF, _MAXF, -_MAXF, _MAXF, -_MAXF, _MAXF, _MAXF],
    )[0]
    total, nonnull, lo, hi, below, above, above_lo, top = row
    below, above, nonnull = int(below), int(above), int(nonnull)
    cells = []
    if below:
        cells.append(Cell(below, -math.inf, -math.inf, splittable=False))
    if nonnull - below - above:
        cells.append(Cell(nonnull - below - above, lo, hi))
    if above:
        cells.append(Cell(above, above_lo, top, splittable=False))
    return int(total), int(total) - nonnull, cells


@dataclass
class _Run:
    first: int  # index of its first cell in the cell list
    last: int  # index of its last cell (inclusive)
    width: float
    est_rows: int


def _refine(s: _Source, kind: _Kind, cells: list[Cell], chunk_size: int, rows: int, notes: list[str]) -> int:
    row_cap = max(ROW_CAP_MIN, 4 * OVERSAMPLE * rows // chunk_size)
    rounds = 0
    while rounds < MAX_ROUNDS:
        todo = [i for i, c in enumerate(cells) if c.count > chunk_size and not c.single]
        if not todo:
            return rounds
        exact = [i for i in todo if cells[i].stalls >= 2]
        runs = _runs(kind, cells, set(todo) - set(exact), chunk_size, row_cap)
        rounds += 1
        replacement: dict[int, list[Cell]] = {}
        if exact:
            replacement.update(_exact_round(s, kind, cells, exact))
        if runs:
            replacement.update(_histogram_round(s, kind, cells, runs))
        # splice the refined cells in, back to front so the indexes stay valid
        for first in sorted(replacement, reverse=True):
            last, new = replacement[first]
            old = cells[first : last + 1]
            for c in new:
                same = next((o for o in old if o.count == c.count and o.lo == c.lo and o.hi == c.hi), None)
                if same is not None and c.count > chunk_size:
                    c.stalls = same.stalls + 1
            cells[first : last + 1] = new
    left = [c for c in cells if c.count > chunk_size and not c.single]
    if left:
        notes.append(f"{len(left)} cells still over-full after {MAX_ROUNDS} rounds")
    return rounds


def _runs(kind: _Kind, cells: list[Cell], todo: set[int], chunk_size: int, row_cap: int) -> list[_Run]:
    """Group adjacent over-full cells of similar density; pick the runs for this round."""
    runs: list[_Run] = []
    for i in sorted(todo):
        c = cells[i]
        span = kind.span(c.lo, c.hi)
        parts = max(MIN_SPLIT, math.ceil(OVERSAMPLE * c.count / chunk_size))
        width = span / parts
        if kind.integral and math.isfinite(width):
            width = float(_aligned(max(1, math.ceil(width)), chunk_size))
        if not (width > 0 and math.isfinite(width)):
            width = math.nan  # refined alone; an invalid width makes it stall into the exact path
        est = min(c.count, int(span / width) + 1) if width == width else c.count
        prev = runs[-1] if runs else None
        if (
            prev is not None
            and prev.last == i - 1
            and c.stalls == 0
            and cells[prev.first].stalls == 0
            and width == width
            and prev.width / 4 <= width <= prev.width * 4
        ):
            w = min(prev.width, width)
            # re-estimate the run's result rows at the common width
            total = 0
            for j in range(prev.first, i + 1):
                cj = cells[j]
                total += min(cj.count, int(kind.span(cj.lo, cj.hi) / w) + 1)
            prev.last, prev.width, prev.est_rows = i, w, total
        else:
            runs.append(_Run(i, i, width, est))
    chosen, rows = [], 0
    for r in sorted(runs, key=lambda r: -sum(cells[j].count for j in range(r.first, r.last + 1))):
        if len(chosen) >= MAX_RUNS or (chosen and rows + r.est_rows > row_cap):
            continue
        chosen.append(r)
        rows += r.est_rows
    return sorted(chosen, key=lambda r: r.first)


def _aligned(width: int, chunk_size: int) -> int:
    """Whole units, preferably a divisor of chunk_size (dense keys then give chunks of exactly chunk_size)."""
    if width >= chunk_size:
        return width
    best = 1
    for d in range(1, math.isqrt(chunk_size) + 1):
        if chunk_size % d == 0:
            for c in (d, chunk_size // d):
                if best < c <= width:
                    best = c
    return best if 2 * best >= width else width


def _histogram_round(s: _Source, kind: _Kind, cells: list[Cell], runs: list[_Run]) -> dict[int, tuple[int, list[Cell]]]:
    """One query: per run, equal-width buckets of x from the run's lowest key; COUNT/MIN/MAX each."""
    tag_sql, tag_params, where_sql, where_params, bucket_sql, bucket_params = [], [], [], [], [], []
    for r, run in enumerate(runs):
        lo, hi = cells[run.first].lo, cells[run.last].hi
        between, params = kind.between(lo, hi)
        tag_sql.append(f"WHEN {between} THEN {r}")
        tag_params += params
        where_sql.append(between)
        where_params += params
        x_sql, x_params = kind.image(lo)
        width = run.width if run.width == run.width else 1.0
        bucket_sql.append(f"WHEN {r} THEN FLOOR({x_sql} / ?)")
        bucket_params += [*x_params, width]
    body = (
        f', "tagged" AS (SELECT "k", CASE {" ".join(tag_sql)} END AS "r" FROM "src" '
        f"WHERE {' OR '.join(where_sql)}) "
        f'SELECT "r", CASE "r" {" ".join(bucket_sql)} END AS "b", COUNT(*), MIN("k"), MAX("k") '
        'FROM "tagged" GROUP BY "r", "b"'
    )
    result = s.run(body, [*tag_params, *where_params, *bucket_params])
    per_run: dict[int, list[tuple[Any, ...]]] = {}
    for r, b, n, lo, hi in result:
        per_run.setdefault(int(r), []).append((_order(b), int(n), lo, hi))
    out: dict[int, tuple[int, list[Cell]]] = {}
    for r, run in enumerate(runs):
        buckets = sorted(per_run.get(r, []), key=lambda t: t[0])
        new = []
        for _, n, lo, hi in buckets:
            new.append(Cell(n, lo, hi))
        _check(new, cells[run.first : run.last + 1])
        out[run.first] = (run.last, new)
    return out


def _exact_round(s: _Source, kind: _Kind, cells: list[Cell], idx: list[int]) -> dict[int, tuple[int, list[Cell]]]:
    """Cells x cannot split: count their distinct values exactly (GROUP BY the key itself)."""
    where_sql, params = [], []
    for i in idx:
        between, between_params = kind.between(cells[i].lo, cells[i].hi)
        where_sql.append(between)
        params += between_params
    result = s.run(f'SELECT "k", COUNT(*) FROM "src" WHERE {" OR ".join(where_sql)} GROUP BY "k"', params)
    values: list[list[Any]] = []
    for v, n in sorted(((v, int(n)) for v, n in result), key=lambda t: _order(t[0])):
        if values and values[-1][0] == v:  # distinct in Snowflake, equal once read (ns truncated to us)
            values[-1][1] += n
        else:
            values.append([v, n])
    out: dict[int, tuple[int, list[Cell]]] = {}
    for i in idx:
        c = cells[i]
        new = [Cell(n, v, v, splittable=False) for v, n in values if c.lo <= v <= c.hi]
        _check(new, [c])
        out[i] = (i, new)
    return out


def _order(value: Any) -> Any:
    """Sort key that puts NaN last (buckets of NaN never occur for finite cells, but stay safe)."""
    if isinstance(value, float) and value != value:
        return (1, 0.0)
    if isinstance(value, (int, float, Decimal)):
        return (0, value)
    return value


def _check(new: list[Cell], old: list[Cell]) -> None:
    """The refined cells must be ordered and disjoint; they should hold exactly the old cells' rows.

    A different row count means the table changed between two planning queries (no Time Travel):
    the chunks still cover every row (the ranges are half-open), only their sizes are estimates.
    """
    if sum(c.count for c in new) != sum(c.count for c in old):
        log.warning(
            "rows in %r..%r changed from %d to %d while planning; chunk sizes are estimates (use Time Travel)",
            old[0].lo,
            old[-1].hi,
            sum(c.count for c in old),
            sum(c.count for c in new),
        )
    for a, b in itertools.pairwise(new):
        if not a.hi < b.lo:
            raise RuntimeError(f"refined cells overlap: {a.lo!r}..{a.hi!r} and {b.lo!r}..{b.hi!r}")


def _merge(cells: list[Cell], nulls: int, chunk_size: int) -> tuple[list[Any], list[int], list[tuple[Any, Any, int]]]:
    """Greedy: add cells to the current chunk while it stays within chunk_size; cut at a cell's lowest key.

    Returns the boundaries, the exact rows of each chunk, and the chunks above chunk_size as
    (lowest key, highest key, rows); (None, None, rows) is the NULL keys.
    """
    boundaries: list[Any] = []
    chunks: list[list[Any]] = [[nulls, None, None]]  # rows, lowest key, highest key
    for c in cells:
        if chunks[-1][0] > 0 and chunks[-1][0] + c.count > chunk_size:
            boundaries.append(c.lo)
            chunks.append([0, c.lo, c.hi])
        chunk = chunks[-1]
        chunk[0] += c.count
        chunk[1] = c.lo if chunk[1] is None else chunk[1]
        chunk[2] = c.hi
    oversize = []
    for i, (n, lo, hi) in enumerate(chunks):
        if n > chunk_size:
            oversize.append((None, None, n) if i == 0 and nulls > chunk_size else (lo, hi, n))
    return boundaries, [c[0] for c in chunks], oversize
