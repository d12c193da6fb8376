"""Per table: PostgreSQL holds as many rows as Snowflake in each copied chunk.

One check per table asset, partitioned like it: each chunk's materialization is followed, in the same
run, by the check of that chunk, so a backfill verifies as it copies and the cost stays one count per
side per chunk (an unpartitioned table-wide check would run in every chunk's run and recount every
chunk each time). The comparison lives in ``cm_datacopy.verify`` (no Dagster there).
"""

import warnings

import dagster as dg
import psycopg

from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.run.verify import verify_table

CHECK_NAME = "rows_match_snowflake"


def table_check(cfg: SourceConfig, table: TableConfig) -> dg.AssetChecksDefinition:
    source_name, table_key = cfg.name, table.key

    def _check(context: dg.AssetCheckExecutionContext, datacopy: DatacopyConfig) -> dg.AssetCheckResult:
        source_cfg = datacopy.source(source_name)
        with psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            run, index = partitions.resolve(pg, source_cfg, context.partition_key)
        result = verify_table(source_cfg, run.run_id, table_key, chunk_indexes=[index])
        if result.chunks_open:
            description = "the chunk is not copied yet"
        elif result.ok:
            description = f"{result.source_rows} rows on both sides"
        else:
            description = "; ".join(result.mismatches)
        return dg.AssetCheckResult(
            passed=result.ok and not result.chunks_open,
            description=description,
            metadata={
                "migration_run_id": run.run_id,
                "source_rows": result.source_rows,
                "target_rows": result.target_rows,
                "mismatches": dg.MetadataValue.json(result.mismatches),
            },
        )

    # Partitioned checks are a "preview" feature of Dagster 1.13: said once here, not on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=partitions.table_asset_key(source_name, table),
            name=CHECK_NAME,
            partitions_def=partitions.partitions_def(source_name, table),
            description=f"Rows of {table_key} in the chunk equal Snowflake's (at the run's snapshot).",
            blocking=False,
        )(_check)
