"""NUL bytes: PostgreSQL ``text`` cannot hold them, nor ``jsonb`` its ``\\u0000`` escape.

``nul_bytes: fail`` (default) stops the chunk naming the row's key; ``nul_bytes: replace`` puts
``nul_replacement`` in place of each NUL and counts them (per chunk, in the ledger's ``nul_replaced``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from cm_datacopy.config import SourceConfig
from cm_datacopy.errors import ChunkError
from cm_datacopy.typeplan import ColumnPlan


class NulByteError(ChunkError):
    """A text value holds a NUL byte, which PostgreSQL text and jsonb cannot store."""


@dataclass
class NulPolicy:
    """What to do with NUL bytes, and how many were replaced in this chunk."""

    columns: list[ColumnPlan]
    replacement: str | None
    key_index: int | None
    key_name: str | None
    replaced: int = 0

    @classmethod
    def for_source(cls, cfg: SourceConfig, columns: list[ColumnPlan], key: str | None) -> NulPolicy:
        index = next((i for i, c in enumerate(columns) if c.source_name == key), None)
        return cls(columns, cfg.nul_replacement if cfg.nul_bytes == "replace" else None, index, key)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with the policy applied to every text and JSON column."""
        arrays = [self._column(batch, i, col, batch.column(i)) for i, col in enumerate(self.columns)]
        return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)

    def _column(self, batch: pa.RecordBatch, i: int, col: ColumnPlan, arr: pa.Array) -> pa.Array:
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            return arr
        needle, swap = (
            ("\\u0000", json.dumps(self.replacement or "")[1:-1])
            if col.encoding == "json"
            else ("\x00", self.replacement or "")
        )
        hits = pc.match_substring(arr, needle)
        values = pc.sum(hits).as_py() or 0
        if not values:
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
                f"store ({values} such values in this batch); set nul_bytes: replace to substitute nul_replacement"
            )
        # Count NULs, not values holding one: what the ledger's nul_replaced and the README say.
        self.replaced += pc.sum(pc.count_substring(arr, needle)).as_py() or 0
        return pc.replace_substring(arr, needle, swap)
