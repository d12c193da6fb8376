"""The Dagster layer: definitions built from the cm_datacopy config file.

For each source: one partitioned asset per table (group = the source) whose partitions are its
chunks, a checksum check per table and chunk, an unpartitioned published-table asset downstream of
the chunks, a planning job, a copy job per table (what the auto-resume sensor requests); one
auto-resume sensor watches every source, one publish sensor swaps in tables whose chunks are done.
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
from cm_datacopy.dagster_defs.checks import table_check
from cm_datacopy.dagster_defs.jobs import copy_job_name, copy_table_job, plan_source_job
from cm_datacopy.dagster_defs.publish import publish_sensor, published_asset
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.dagster_defs.sensors import Target, auto_resume_sensor


def resume_targets(config: Config) -> dict[dg.AssetKey, Target]:
    """Each table asset with what the auto-resume sensor needs: its source, table, partitions and job."""
    targets = {}
    for cfg in config.sources.values():
        for table in cfg.tables:
            key = partitions.table_asset_key(cfg.name, table)
            targets[key] = Target(
                cfg.name, table.key, partitions.partitions_def_name(cfg.name, table), copy_job_name(cfg.name, key)
            )
    return targets


def build_definitions(path: str | Path | None = None) -> dg.Definitions:
    """Definitions for every source of the config file (``$CM_DATACOPY_CONFIG`` or ``./cm_datacopy.yaml``)."""
    resolved = config_path(path).resolve()
    config = load_config(resolved)
    resource = DatacopyConfig(path=str(resolved))
    assets, checks, jobs, copy_jobs = [], [], [], []
    for cfg in config.sources.values():
        for table in cfg.tables:
            asset = table_asset(cfg, table)
            assets += [asset, published_asset(cfg, table)]
            checks.append(table_check(cfg, table))
            copy_jobs.append(copy_table_job(cfg.name, asset))
        jobs.append(plan_source_job(cfg))
    sensors = [
        auto_resume_sensor(resume_targets(config), resource.source, copy_jobs),
        publish_sensor(config, resource.source),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[*jobs, *copy_jobs],
        sensors=sensors,
        resources={"datacopy": resource},
    )
