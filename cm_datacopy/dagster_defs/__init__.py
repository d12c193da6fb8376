"""The Dagster layer: definitions built from the cm_datacopy config file.

Per source (an asset group): a partitioned asset per table whose partitions are its chunks, with a
checksum check per chunk; a published-table asset per table; the jobs ``copy_<source>`` (the whole
source, as ``cm-datacopy run`` does) and ``plan_<source>`` (plan only, then backfill the tables);
one job per table for the auto-resume sensor's requests. One auto-resume sensor watches every
source; one publish sensor publishes tables whose chunks were copied by backfills.

Every job runs its steps in one process (``in_process_executor``): a step copies many chunks, with
``workers`` threads or remote workers, and a process per step would only add start-up time.
Nothing in the copy engine imports this package.
"""

from __future__ import annotations

from pathlib import Path

try:
    import dagster as dg
except ModuleNotFoundError as exc:  # the core install (pip install cm_datacopy) has no Dagster
    raise ModuleNotFoundError(
        "the Dagster layer needs the dagster extra: pip install 'cm_datacopy[dagster]'", name=exc.name
    ) from None

from cm_datacopy.config import Config, config_path, load_config
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.assets import table_asset
from cm_datacopy.dagster_defs.jobs import (
    chunks_job_name,
    copy_chunks_job,
    copy_job_name,
    source_jobs,
)
from cm_datacopy.dagster_defs.publish import publish_sensor, published_asset
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.dagster_defs.sensors import TableTarget, Targets, auto_resume_sensor


def resume_targets(config: Config) -> Targets:
    """What the auto-resume sensor watches: each table asset and each source's copy job."""
    tables = {}
    for cfg in config.sources.values():
        for table in cfg.tables:
            key = partitions.table_asset_key(cfg.name, table)
            tables[key] = TableTarget(
                cfg.name, table.key, partitions.partitions_def_name(cfg.name, table), chunks_job_name(key)
            )
    return Targets(tables, {copy_job_name(name): name for name in config.sources})


def build_definitions(path: str | Path | None = None) -> dg.Definitions:
    """Definitions for every source of the config file (``$CM_DATACOPY_CONFIG`` or ``./cm_datacopy.yaml``)."""
    resolved = config_path(path).resolve()
    config = load_config(resolved)
    resource = DatacopyConfig(path=str(resolved))
    assets, copy_jobs, plan_jobs, chunks_jobs = [], [], [], []
    for cfg in config.sources.values():
        for table in cfg.tables:
            asset = table_asset(cfg, table)
            assets += [asset, published_asset(cfg, table)]
            chunks_jobs.append(copy_chunks_job(cfg.name, asset.key))
        copy_job, plan_job = source_jobs(cfg)
        copy_jobs.append(copy_job)
        plan_jobs.append(plan_job)
    sensors = [
        auto_resume_sensor(resume_targets(config), resource.source, [*copy_jobs, *chunks_jobs]),
        publish_sensor(config, resource.source),
    ]
    return dg.Definitions(
        assets=assets,
        jobs=[*copy_jobs, *plan_jobs, *chunks_jobs],
        sensors=sensors,
        resources={"datacopy": resource},
        executor=dg.in_process_executor,
    )
