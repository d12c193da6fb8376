"""The published table: an unpartitioned asset per table, downstream of its chunk partitions.

Its materialization is the swap of publish mode (``cm_datacopy.publish.publish_table``: the shadow's
rows replace the target's in one transaction, after the ledger and the target guards agree). For an
in-place table the chunks already wrote the target, so it records that the table is complete. A
sensor requests it once every chunk of the table is done in the current migration run, whether the
chunks came from a backfill, a partition launch or the auto-resume sensor.
"""

from collections.abc import Callable

import dagster as dg
import psycopg

from cm_datacopy.config import Config, SourceConfig, TableConfig
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.publish import publish_table

PUBLISH_SENSOR_NAME = "cm_datacopy_publish"


def published_asset_key(source: str, table: TableConfig) -> dg.AssetKey:
    return dg.AssetKey([*partitions.table_asset_key(source, table).path, "published"])


def published_asset(cfg: SourceConfig, table: TableConfig) -> dg.AssetsDefinition:
    source_name, table_key = cfg.name, table.key

    @dg.asset(
        key=published_asset_key(source_name, table),
        deps=[partitions.table_asset_key(source_name, table)],
        group_name=source_name,
        kinds={"postgres"},
        tags={"cm_datacopy/source": source_name},
        description=f"PostgreSQL {table_key} as readers see it: swapped in when every chunk is done and verified "
        f"({table.mode} mode).",
    )
    def _publish(context: dg.AssetExecutionContext, datacopy: DatacopyConfig) -> dg.MaterializeResult:
        source_cfg = datacopy.source(source_name)
        ledger = Ledger(source_cfg.postgres.ledger_schema)
        with psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            run = ledger.latest_run(pg, source_name)
            if run is None:
                raise dg.Failure(f"no migration run of {source_name} yet: run the job plan_{source_name} first")
            open_chunks = ledger.chunks(pg, run.run_id, table_key=table_key, open_only=True)
            if open_chunks:
                raise dg.Failure(
                    f"{len(open_chunks)} chunks of {table_key} are not done in run {run.run_id}; nothing published"
                )
            try:
                result = publish_table(source_cfg, pg, run.run_id, table_key)
            except DatacopyError as exc:
                raise dg.Failure(description=str(exc), metadata={"migration_run_id": run.run_id}) from None
            ledger.finish_if_complete(pg, run.run_id)
        context.log.info(f"{table_key}: {'published' if result.published else 'complete in place'}")
        return dg.MaterializeResult(
            metadata={
                "migration_run_id": dg.MetadataValue.text(run.run_id),
                "mode": dg.MetadataValue.text(table.mode),
                "rows": dg.MetadataValue.int(result.rows),
                "replaced_rows": dg.MetadataValue.int(result.replaced_rows),
            }
        )

    return _publish


def publish_requests(config: Config, load_source: Callable[[str], SourceConfig]) -> list[dg.RunRequest]:
    """A request per table whose chunks are all done in its source's current run and not yet published.

    In-place tables are requested too (their materialization records completion); the run key makes
    each table of each migration run requested once.
    """
    requests = []
    for name, file_cfg in config.sources.items():
        cfg = load_source(name)
        ledger = Ledger(cfg.postgres.ledger_schema)
        try:
            with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
                run = ledger.latest_run(pg, name) if ledger.exists(pg) else None
                if run is None or run.status == "superseded":
                    continue
                open_tables = {c.table_key for c in ledger.chunks(pg, run.run_id, open_only=True)}
                published = {e.table_key for e in ledger.table_entries(pg, run.run_id) if e.published_at}
        except (psycopg.Error, DatacopyError):
            continue
        for table in file_cfg.tables:
            if table.key in open_tables or table.key in published:
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"publish:{run.run_id}:{table.key}",
                    asset_selection=[published_asset_key(name, table)],
                    tags={"cm_datacopy/source": name, "cm_datacopy/migration_run_id": run.run_id},
                )
            )
    return requests


def publish_sensor(
    config: Config, load_source: Callable[[str], SourceConfig], minimum_interval_seconds: int = 15
) -> dg.SensorDefinition:
    keys = [published_asset_key(cfg.name, t) for cfg in config.sources.values() for t in cfg.tables]

    @dg.sensor(
        name=PUBLISH_SENSOR_NAME,
        description="Publishes a table once every chunk of its current migration run is done.",
        target=dg.AssetSelection.assets(*keys),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        requests = publish_requests(config, load_source)
        if not requests:
            return dg.SkipReason("no table has all its chunks done and unpublished")
        return dg.SensorResult(run_requests=requests)

    return _sensor
