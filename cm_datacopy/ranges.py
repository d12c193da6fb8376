"""Chunk ranges: ranges of a sortable key that together cover every row of a table exactly once.

A keyed table is cut at boundary values b1 < b2 < ... < bn into n+1 half-open ranges:
``key < b1 OR key IS NULL``, ``b1 <= key < b2``, ..., ``bn <= key``. The first and last ranges are
open, so rows added below the smallest or above the largest key still belong to a chunk; NULL keys
ride with the first chunk. A table without a key is one chunk holding every row.

Only numbers, dates and timestamps may be keys: text sorts differently in Snowflake and
PostgreSQL (collations), and a range that means other rows on each side would delete rows it
does not reload.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cm_datacopy.typeplan import KeyKind


def encode_bound(kind: KeyKind, value: Any) -> str:
    """A bound as text that converts back to exactly the same value."""
    if kind == "float":
        return repr(float(value))
    if kind in ("timestamp", "timestamptz", "date"):
        if kind == "timestamptz" and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        if kind == "timestamptz":
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    return str(value)


def decode_bound(kind: KeyKind, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "decimal":
        return Decimal(text)
    if kind == "float":
        return float(text)
    if kind == "date":
        return dt.date.fromisoformat(text)
    return dt.datetime.fromisoformat(text)


@dataclass(frozen=True)
class Chunk:
    """One range of a table. ``lower`` is inclusive, ``upper`` exclusive; None means open."""

    table_key: str
    index: int
    key_column: str | None = None
    key_kind: KeyKind | None = None
    lower: str | None = None
    upper: str | None = None
    include_nulls: bool = False

    def describe(self) -> str:
        if self.key_column is None:
            return "all rows"
        parts = []
        if self.lower is not None:
            parts.append(f"{self.key_column} >= {self.lower}")
        if self.upper is not None:
            parts.append(f"{self.key_column} < {self.upper}")
        text = " AND ".join(parts) or "all keys"
        return f"{text} (or NULL)" if self.include_nulls else text

    def values(self) -> tuple[Any, Any]:
        """The bounds as Python values of the key's type (None: open)."""
        assert self.key_kind is not None
        lower = None if self.lower is None else decode_bound(self.key_kind, self.lower)
        upper = None if self.upper is None else decode_bound(self.key_kind, self.upper)
        return lower, upper


def plan_chunks(table_key: str, key_column: str | None, key_kind: KeyKind | None, boundaries: list[Any]) -> list[Chunk]:
    """Chunks from sorted, distinct boundary values (as returned by the source)."""
    if key_column is None or key_kind is None:
        return [Chunk(table_key, 0)]
    encoded = [encode_bound(key_kind, b) for b in boundaries]
    edges: list[str | None] = [None, *encoded, None]
    return [
        Chunk(table_key, i, key_column, key_kind, edges[i], edges[i + 1], include_nulls=(i == 0))
        for i in range(len(edges) - 1)
    ]
