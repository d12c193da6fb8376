"""What Dagster records of each chunk: one materialization and one check evaluation per chunk.

Shared by the table assets (a backfill's ranged runs) and the per-source job, so a chunk looks the
same in the UI whichever copied it. A materialization carries the chunk's own figures (plotted per
partition under Metadata → Plots) and the table's figures so far (the asset's overview shows its
latest materialization: rows copied, % done, rows/s, chunks verified). A chunk done earlier reports
the ledger's figures of the attempt that copied it.

The check ``checksums_match_snowflake`` compares the two checksums recorded when the chunk
committed: Snowflake's of the chunk's rows, and PostgreSQL's of the rows it loaded (a chunk whose
checksums differ is rolled back and fails, so a materialized chunk shows what was proven).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg

# No public name exists for this: without it the UI does not tie a check evaluation logged from a
# step's body to the materialization it checks, and ignores the result.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from cm_datacopy.chunk import ChunkResult
from cm_datacopy.chunk.task import classify
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.ranges import Chunk

CHECK_NAME = "checksums_match_snowflake"
RETRYABLE = "retryable"  # metadata of a step's Failure: can another attempt succeed?


def check_spec(asset_key: dg.AssetKey, partitions: dg.PartitionsDefinition) -> dg.AssetCheckSpec:
    # Partitioned checks are a "preview" feature of Dagster 1.13: said once here, not on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            CHECK_NAME,
            asset=asset_key,
            partitions_def=partitions,
            blocking=False,
            description="Snowflake's checksum of the chunk's rows equals PostgreSQL's of the rows loaded, both "
            "computed inside the chunk's transaction (a chunk whose checksums differ is rolled back).",
        )


@dataclass(frozen=True)
class ChunkFailure:
    """A chunk that is not done after this step: its error and whether another attempt can succeed."""

    key: str
    error: str
    retryable: bool
    attempt: int = 0


@dataclass
class ChunkReporter:
    """Turns each ``ChunkResult`` of one migration run into Dagster events, and keeps the failures."""

    instance: dg.DagsterInstance
    pg: psycopg.Connection[Any]
    ledger: Ledger
    run_id: str
    keys: dict[tuple[str, int], str]  # (table key, chunk index) → partition key
    chunks: dict[tuple[str, int], Chunk]
    asset_keys: dict[str, dg.AssetKey]  # table key → its asset
    checked: bool  # the tables have the checksum check (the source verifies)
    failures: list[ChunkFailure] = field(default_factory=list)
    rows: int = 0
    started: float = field(default_factory=time.monotonic)

    def events(self, result: ChunkResult) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
        where = (result.task.table_key, result.task.chunk_index)
        key = self.keys.get(where, result.task.name)
        if not result.ok:
            error = result.error or f"another attempt took the chunk over ({result.outcome})"
            self.failures.append(ChunkFailure(key, error, result.retryable is not False, result.attempt))
            return
        if result.outcome == "copied":
            self.rows += result.rows
        asset_key = self.asset_keys[result.task.table_key]
        chunk = self.chunks[where]
        yield dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata=self._metadata(result, chunk))
        if self.checked:
            # The materialization is in the event log once the step resumes after yielding it.
            yield self._evaluation(asset_key, key, result, chunk)

    def _metadata(self, result: ChunkResult, chunk: Chunk) -> dict[str, Any]:
        return {
            "table progress": self._table_progress(result.task.table_key),
            "rows": dg.MetadataValue.int(result.rows),
            "rows per second": dg.MetadataValue.float(round(result.rows_per_second, 1)),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "bytes": dg.MetadataValue.int(result.bytes),
            "attempt": dg.MetadataValue.int(result.attempt),
            "key range": dg.MetadataValue.text(chunk.describe()),
            "copied": dg.MetadataValue.text(
                "by this run" if result.outcome == "copied" else "earlier (figures from the ledger)"
            ),
            "source checksum": dg.MetadataValue.text(_text(result.source_checksum)),
            "target checksum": dg.MetadataValue.text(_text(result.target_checksum)),
            "migration run": dg.MetadataValue.text(self.run_id),
        }

    def _table_progress(self, table_key: str) -> dg.MetadataValue:
        row = next((t for t in self.ledger.table_progress(self.pg, self.run_id) if t["table_key"] == table_key), None)
        if row is None:
            return dg.MetadataValue.md("(no ledger entry)")
        total, done = row["chunks_total"], row["chunks_done"]
        elapsed = time.monotonic() - self.started
        step_rate = self.rows / elapsed if elapsed > 0 and self.rows else 0.0
        per_worker = float(row["rows_per_second"] or 0)
        return dg.MetadataValue.md(
            "| rows copied | done | chunks | rows/s this run | rows/s per worker | checksums equal |\n"
            "|---:|---:|---:|---:|---:|---:|\n"
            f"| {int(row['rows_copied']):,} | {100.0 * done / max(total, 1):.1f} % | {done:,} of {total:,} "
            f"| {step_rate:,.0f} | {per_worker:,.0f} | {row['chunks_verified']:,} of {done:,} |"
        )

    def _evaluation(
        self, asset_key: dg.AssetKey, key: str, result: ChunkResult, chunk: Chunk
    ) -> dg.AssetCheckEvaluation:
        if result.source_checksum is None or result.target_checksum is None:
            description = "no checksum recorded: the chunk was copied with verify: false"
        elif result.verified:
            description = f"checksums equal ({result.rows:,} rows)"
        else:
            description = f"checksums differ: Snowflake {result.source_checksum}, PostgreSQL {result.target_checksum}"
        return dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=CHECK_NAME,
            passed=result.verified,
            partition=key,
            description=description,
            target_materialization_data=self._target(asset_key, key),
            metadata={
                "source rows": dg.MetadataValue.int(result.source_rows if result.source_rows is not None else -1),
                "target rows": dg.MetadataValue.int(result.rows),
                "source checksum": dg.MetadataValue.text(_text(result.source_checksum)),
                "target checksum": dg.MetadataValue.text(_text(result.target_checksum)),
                "key range": dg.MetadataValue.text(chunk.describe()),
            },
        )

    def _target(self, asset_key: dg.AssetKey, key: str) -> AssetCheckEvaluationTargetMaterializationData | None:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[key]), limit=1
        ).records
        if not records:
            return None
        record = records[0]
        return AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
        )


def chunks_failure(failures: list[ChunkFailure], total: int) -> dg.Failure | None:
    """The step's failure if a chunk failed: retryable if any failed chunk can succeed on another attempt."""
    if not failures:
        return None
    retryable = any(f.retryable for f in failures)
    lines = ["| chunk | attempt | retryable | error |", "|---|---:|---|---|"]
    for f in failures[:50]:
        error = f.error.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {f.key} | {f.attempt} | {'yes' if f.retryable else 'no'} | {error} |")
    return step_failure(
        f"{len(failures)} of {total} chunks failed ("
        + ("a retry can succeed" if retryable else "final: fix the cause first")
        + f"); first: {failures[0].key}: {failures[0].error}",
        retryable,
        {"failed chunks": dg.MetadataValue.md("\n".join(lines))},
    )


def step_failure(description: str, retryable: bool, metadata: dict[str, Any] | None = None) -> dg.Failure:
    """A step's failure, saying whether another attempt can succeed (the auto-resume sensor reads it)."""
    return dg.Failure(
        description=description,
        metadata={RETRYABLE: dg.MetadataValue.bool(retryable), **(metadata or {})},
        allow_retries=retryable,
    )


def error_failure(exc: Exception, step: str) -> dg.Failure:
    """A step's failure for an error of the copy engine, classified as the engine does."""
    message, retryable = classify(exc, step)
    return step_failure(message, retryable)


def _text(checksum: int | None) -> str:
    return "-" if checksum is None else str(checksum)
