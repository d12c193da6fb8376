"""One partitioned asset per table; each materialization copies one chunk through ``copy_chunk``.

Granularity: an asset per table (not per source) so each table shows its own partition bar and
its own row-count check, while the source is the asset group: selecting the group and clicking
"Materialize all" launches one backfill of every chunk of every table of the source.
"""

from typing import Any

import dagster as dg
import psycopg

from cm_datacopy.chunk import ChunkTask, copy_chunk
from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger

SOURCE_TAG = "cm_datacopy/source"


def pool_name(source: str) -> str:
    """The concurrency pool of a source: its limit is how many chunks copy at once (``workers``)."""
    return f"cm_datacopy_{source}"


def table_asset(cfg: SourceConfig, table: TableConfig) -> dg.AssetsDefinition:
    source_name, table_key = cfg.name, table.key

    @dg.asset(
        key=partitions.table_asset_key(source_name, table),
        partitions_def=partitions.partitions_def(source_name, table),
        group_name=source_name,
        pool=pool_name(source_name),
        kinds={"snowflake", "postgres"},
        tags={SOURCE_TAG: source_name},
        description=f"Snowflake {table.source} copied into PostgreSQL {table_key}, one partition per chunk.",
        metadata={"table": table_key, "source_table": table.source, "chunk_key": table.chunk_key or "(one chunk)"},
    )
    def _copy(context: dg.AssetExecutionContext, datacopy: DatacopyConfig) -> dg.MaterializeResult:
        source_cfg = datacopy.source(source_name)
        with psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            run, index = partitions.resolve(pg, source_cfg, context.partition_key)
        context.log.info(f"copying {table_key} chunk {index:05d} of migration run {run.run_id}")
        result = copy_chunk(source_cfg, ChunkTask(source_name, run.run_id, table_key, index))
        if result.outcome == "failed":
            raise dg.Failure(
                description=f"chunk {table_key}#{index} (attempt {result.attempt}) failed: {result.error}",
                metadata={"migration_run_id": run.run_id, "chunk_index": index, "retryable": bool(result.retryable)},
                allow_retries=bool(result.retryable),
            )
        if result.outcome == "superseded":
            raise dg.Failure(
                description=f"chunk {table_key}#{index} was taken over by a newer attempt; not marking it done",
                metadata={"migration_run_id": run.run_id, "chunk_index": index},
            )
        _finish_if_complete(source_cfg, run.run_id)
        return dg.MaterializeResult(metadata=_metadata(result))

    return _copy


def _metadata(result: Any) -> dict[str, Any]:
    return {
        "rows": dg.MetadataValue.int(result.rows),
        "bytes": dg.MetadataValue.int(result.bytes),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(round(result.rows_per_second, 1)),
        "migration_run_id": dg.MetadataValue.text(result.task.run_id),
        "attempt": dg.MetadataValue.int(result.attempt),
        "outcome": dg.MetadataValue.text(result.outcome),
        "rows_replaced": dg.MetadataValue.int(result.rows_replaced),
    }


def _finish_if_complete(cfg: SourceConfig, run_id: str) -> None:
    """Mark the migration run completed once nothing is left, as ``cm-datacopy run`` does.

    Only on completion: a backfill's chunks finish one by one, and marking the run failed while
    others are still queued (or a table awaits its publish) would mislead ``cm-datacopy status``.
    """
    try:
        with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
            Ledger(cfg.postgres.ledger_schema).finish_if_complete(pg, run_id)
    except (psycopg.Error, DatacopyError):
        pass  # the chunk itself is committed; the status is derived again by the next finisher
