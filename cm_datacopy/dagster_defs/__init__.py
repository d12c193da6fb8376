"""The Dagster layer: definitions built from the cm_datacopy config file.

For each source: one partitioned asset per table (group = the source), a row-count check per
table, a planning job, a copy job per table (what the auto-resume sensor requests) and a verify
job; one auto-resume sensor watches every source. Nothing in the copy engine imports this package.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from cm_datacopy.config import config_path, load_config
from cm_datacopy.dagster_defs import partitions
from cm_datacopy.dagster_defs.assets import table_asset
from cm_datacopy.dagster_defs.checks import table_check
from cm_datacopy.dagster_defs.jobs import copy_table_job, plan_source_job, verify_source_job
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.dagster_defs.sensors import Target, auto_resume_sensor


def build_definitions(path: str | Path | None = None) -> dg.Definitions:
    """Definitions for every source of the config file (``$CM_DATACOPY_CONFIG`` or ``./cm_datacopy.yaml``)."""
    resolved = config_path(path).resolve()
    config = load_config(resolved)
    resource = DatacopyConfig(path=str(resolved))
    assets, checks, jobs, copy_jobs = [], [], [], []
    targets: dict[dg.AssetKey, Target] = {}
    for cfg in config.sources.values():
        source_assets = []
        for table in cfg.tables:
            asset = table_asset(cfg, table)
            source_assets.append(asset)
            checks.append(table_check(cfg, table))
            job = copy_table_job(cfg.name, asset)
            copy_jobs.append(job)
            targets[asset.key] = Target(cfg.name, table.key, partitions.partitions_def_name(cfg.name, table), job.name)
        assets += source_assets
        jobs += [plan_source_job(cfg), verify_source_job(cfg.name, source_assets)]
    sensor = auto_resume_sensor(targets, resource.source, copy_jobs)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[*jobs, *copy_jobs],
        sensors=[sensor],
        resources={"datacopy": resource},
    )
