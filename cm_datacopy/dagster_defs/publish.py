"""The published table: an unpartitioned asset per table (``<table>_published``), downstream of its chunks.

In publish mode its materialization is the swap (``cm_datacopy.run.publish.publish_table``: the
shadow's rows replace the target's in one transaction, after the ledger and the target guards
agree); in place, the chunks already wrote the target, and it records that every chunk is done.
``copy_<source>`` records it itself; for chunks copied by backfills (or by ``cm-datacopy run``), the
publish sensor, once every chunk of the table is done in the current migration run, requests it (publish
mode) or records it (in place: nothing is left to do).
"""

from collections.abc import Callable
from typing import Any

import dagster as dg
import psycopg

from cm_datacopy.config import Config, SourceConfig, TableConfig
from cm_datacopy.dagster_defs import partitions, tags
from cm_datacopy.dagster_defs.reporting import error_failure, step_failure
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.dagster_defs.steps import load_source
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.publish import PublishResult, publish_table

PUBLISH_SENSOR_NAME = "cm_datacopy_publish"
MIGRATION_RUN_LABEL = "migration run"


def published_asset_key(source: str, table: TableConfig) -> dg.AssetKey:
    *prefix, name = partitions.table_asset_key(source, table).path
    return dg.AssetKey([*prefix, f"{name}_published"])


def published_metadata(
    ledger: Ledger, pg: psycopg.Connection[Any], run_id: str, table: TableConfig, result: PublishResult
) -> dict[str, Any]:
    if result.published:
        rows, outcome = result.rows, "swapped in (publish mode)"
    else:
        progress = {t["table_key"]: t for t in ledger.table_progress(pg, run_id)}
        rows, outcome = int(progress[table.key]["rows_copied"]), "complete (in place)"
    return {
        MIGRATION_RUN_LABEL: dg.MetadataValue.text(run_id),
        "outcome": dg.MetadataValue.text(outcome),
        "rows": dg.MetadataValue.int(rows),
        "replaced rows": dg.MetadataValue.int(result.replaced_rows),
        "publish method": dg.MetadataValue.text(result.how or "none (in place)"),
    }


def published_asset(cfg: SourceConfig, table: TableConfig) -> dg.AssetsDefinition:
    source_name, table_key = cfg.name, table.key
    how = (
        "the chunks load a shadow table, swapped in once every chunk is done and verified"
        if table.mode == "publish"
        else "the chunks write it directly; this records that every chunk is done"
    )

    @dg.asset(
        key=published_asset_key(source_name, table),
        deps=[partitions.table_asset_key(source_name, table)],
        group_name=source_name,
        kinds={"postgres"},
        tags={tags.SOURCE: source_name},
        description=f"PostgreSQL {table_key} as readers see it ({table.mode} mode: {how}).",
    )
    def _publish(context: dg.AssetExecutionContext, datacopy: DatacopyConfig) -> dg.MaterializeResult:
        source_cfg = load_source(datacopy, source_name)
        ledger = Ledger(source_cfg.postgres.ledger_schema)
        with psycopg.connect(**source_cfg.postgres.connect_kwargs()) as pg:
            run = ledger.latest_run(pg, source_name) if ledger.exists(pg) else None
            if run is None:
                raise step_failure(f"no migration run of {source_name} yet: launch copy_{source_name}", False)
            open_chunks = ledger.chunks(pg, run.run_id, table_key=table_key, open_only=True)
            if open_chunks:
                raise step_failure(
                    f"{len(open_chunks)} chunks of {table_key} are not done in run {run.run_id}; nothing published",
                    retryable=False,
                )
            try:
                result = publish_table(source_cfg, pg, run.run_id, table_key)
                ledger.finish_if_complete(pg, run.run_id)
            except (DatacopyError, psycopg.Error) as exc:
                raise error_failure(exc, f"publishing {table_key}") from None
            metadata = published_metadata(ledger, pg, run.run_id, table, result)
        context.log.info(f"{table_key}: {metadata['outcome'].value}")
        return dg.MaterializeResult(metadata=metadata)

    return _publish


def publish_requests(
    instance: dg.DagsterInstance, config: Config, load_source_cfg: Callable[[str], SourceConfig]
) -> tuple[list[dg.RunRequest], list[dg.AssetMaterialization]]:
    """What to do for each table whose chunks are all done in its source's current run and whose published
    asset has not recorded that run yet (``copy_<source>`` records it itself); once per table and run.

    A publish-mode table gets a run request: its swap is work, with a run's logs and retries. An in-place
    table has nothing left to do (its chunks wrote the target): the sensor records its materialization
    itself, rather than start a run worker process (a few CPU-seconds) to write one event."""
    requests: list[dg.RunRequest] = []
    recorded: list[dg.AssetMaterialization] = []
    for name, file_cfg in config.sources.items():
        cfg = load_source_cfg(name)
        ledger = Ledger(cfg.postgres.ledger_schema)
        try:
            with psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
                run = ledger.latest_run(pg, name) if ledger.exists(pg) else None
                if run is None or run.status == "superseded":
                    continue
                open_tables = {c.table_key for c in ledger.chunks(pg, run.run_id, open_only=True)}
                for table in file_cfg.tables:
                    key = published_asset_key(name, table)
                    if table.key in open_tables or _recorded(instance, key, run.run_id):
                        continue
                    if table.mode == "in_place":
                        metadata = published_metadata(ledger, pg, run.run_id, table, PublishResult(table.key, False))
                        recorded.append(dg.AssetMaterialization(asset_key=key, metadata=metadata))
                        continue
                    requests.append(
                        dg.RunRequest(
                            run_key=f"publish:{run.run_id}:{table.key}",
                            asset_selection=[key],
                            tags={tags.SOURCE: name, tags.MIGRATION_RUN: run.run_id},
                        )
                    )
        except (psycopg.Error, DatacopyError):
            continue
    return requests, recorded


def _recorded(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str) -> bool:
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    entry = materialization.metadata.get(MIGRATION_RUN_LABEL) if materialization else None
    return entry is not None and entry.value == run_id


def publish_sensor(
    config: Config, load_source_cfg: Callable[[str], SourceConfig], minimum_interval_seconds: int = 15
) -> dg.SensorDefinition:
    keys = [published_asset_key(cfg.name, t) for cfg in config.sources.values() for t in cfg.tables]

    @dg.sensor(
        name=PUBLISH_SENSOR_NAME,
        description="Publishes a table once every chunk of its current migration run is done (for chunks "
        "copied by backfills; copy_<source> publishes by itself).",
        target=dg.AssetSelection.assets(*keys),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        requests, recorded = publish_requests(context.instance, config, load_source_cfg)
        if not requests and not recorded:
            return dg.SkipReason("no table has all its chunks done and unpublished")
        return dg.SensorResult(run_requests=requests, asset_events=recorded)

    return _sensor
