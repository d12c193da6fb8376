"""Per table: PostgreSQL holds as many rows as Snowflake in every chunk the current run copied.

The comparison lives in ``cm_datacopy.verify`` (no Dagster there); this module only picks the
migration run whose chunks are the table's partitions now and turns the result into a check result.
"""

import dagster as dg
import psycopg

from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.verify import verify_table

CHECK_NAME = "rows_match_snowflake"


def table_check(cfg: SourceConfig, table: TableConfig) -> dg.AssetChecksDefinition:
    source_name, table_key = cfg.name, table.key
    pdef_name = partitions.partitions_def_name(source_name, table)

    @dg.asset_check(
        asset=partitions.table_asset_key(source_name, table),
        name=CHECK_NAME,
        description=f"Row counts of {table_key}, per copied chunk, equal Snowflake's (at the run's snapshot).",
        blocking=False,
    )
    def _check(context: dg.AssetCheckExecutionContext, datacopy: DatacopyConfig) -> dg.AssetCheckResult:
        source_cfg = datacopy.source(source_name)
        keys = context.instance.get_dynamic_partitions(pdef_name)
        if not keys:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="no chunk plan yet: run the planning job first",
            )
        with psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            run, _ = partitions.resolve(pg, source_cfg, keys[0])
        result = verify_table(source_cfg, run.run_id, table_key)
        return dg.AssetCheckResult(
            passed=result.ok,
            description=(
                f"{result.chunks_checked} copied chunks match"
                if result.ok
                else f"{len(result.mismatches)} chunks differ: " + "; ".join(result.mismatches[:5])
            ),
            metadata={
                "migration_run_id": run.run_id,
                "source_rows": result.source_rows,
                "target_rows": result.target_rows,
                "chunks_checked": result.chunks_checked,
                "chunks_not_done": result.chunks_open,
                "mismatches": dg.MetadataValue.json(result.mismatches),
            },
        )

    return _check
