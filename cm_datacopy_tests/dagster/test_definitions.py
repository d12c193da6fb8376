"""Every definition loads, from the shipped config and from a test config; the layout is as documented."""

from __future__ import annotations

import importlib

import dagster as dg

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs.assets import CHUNKS_PER_RUN
from cm_datacopy.dagster_defs.publish import PUBLISH_SENSOR_NAME
from cm_datacopy.dagster_defs.reporting import CHECK_NAME
from cm_datacopy.dagster_defs.sensors import SENSOR_NAME
from cm_datacopy_tests.dagster.helpers import EVENTS_KEY, REGIONS_KEY, load_defs, source_config
from cm_datacopy_tests.helpers import REPO


def _reload_module_defs() -> dg.Definitions:
    import cm_datacopy.definitions as module

    return importlib.reload(module).defs


def test_shipped_config_loads(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    defs = _reload_module_defs()
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {tuple(k.path) for k in repo.asset_graph.get_all_asset_keys()}
    tables = {
        ("analytics", "analytics", "events"),
        ("analytics", "analytics", "users"),
        ("conflict", "conflict", "incidents"),
        ("conflict", "conflict", "regions"),
    }
    assert keys == tables | {(s, d, f"{t}_published") for s, d, t in tables}, "a chunk asset and a published asset"
    assert len({k[-1] for k in keys}) == len(keys), "no two graph nodes share a name"
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"copy_analytics", "plan_analytics", "copy_conflict", "plan_conflict"} <= jobs
    assert "copy_chunks__conflict__conflict__regions" in jobs
    for job in repo.get_all_jobs():
        assert job.executor_def is dg.in_process_executor, f"{job.name} starts a process per step"
    events = repo.assets_defs_by_key[dg.AssetKey(["analytics", "analytics", "events"])]
    assert isinstance(events.partitions_def, dg.DynamicPartitionsDefinition)
    assert events.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=CHUNKS_PER_RUN)
    assert events.group_names_by_key[events.key] == "analytics"
    assert events.op.pool == "cm_datacopy_analytics"
    checks = {c for a in repo.assets_defs_by_key.values() for c in a.check_keys}
    assert {c.name for c in checks} == {CHECK_NAME} and len(checks) == 4, "one checksum check per table"
    assert repo.get_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    assert repo.get_sensor_def(PUBLISH_SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    published = repo.assets_defs_by_key[dg.AssetKey(["analytics", "analytics", "events_published"])]
    assert published.partitions_def is None
    assert dg.AssetKey(["analytics", "analytics", "events"]) in repo.asset_graph.get(published.key).parent_keys
    texts = [a.descriptions_by_key.get(k) or "" for a in repo.assets_defs_by_key.values() for k in a.keys]
    texts += [j.description or "" for j in repo.get_all_jobs()] + [s.description or "" for s in repo.sensor_defs]
    assert not [t for t in texts if "seed" in t.lower()], "descriptions speak of the product, not its history"


def test_test_config_loads_through_the_environment(monkeypatch, snowflake_server, tmp_path):
    path = source_config(
        tmp_path / "c.yaml", snowflake_server, "ANY_DB", {"host": "h", "port": 5432, "dbname": "d", "user": "u"}
    )
    monkeypatch.setenv(CONFIG_ENV, str(path))
    defs = _reload_module_defs()
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert set(repo.asset_graph.get_all_asset_keys()) == {
        EVENTS_KEY,
        REGIONS_KEY,
        dg.AssetKey([*EVENTS_KEY.path[:-1], "events_published"]),
        dg.AssetKey([*REGIONS_KEY.path[:-1], "regions_published"]),
    }
    assert load_defs(path).get_job_def("copy_analytics") is not None
