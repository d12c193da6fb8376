"""Every definition loads, from the shipped config and from a test config; the layout is as documented."""

from __future__ import annotations

import importlib

import dagster as dg

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs.publish import PUBLISH_SENSOR_NAME
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
    assert keys == tables | {(*t, "published") for t in tables}, "a chunk asset and a published asset per table"
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"plan_analytics", "plan_conflict"} <= jobs
    assert "copy__conflict__conflict__regions" in jobs
    events = repo.assets_defs_by_key[dg.AssetKey(["analytics", "analytics", "events"])]
    assert isinstance(events.partitions_def, dg.DynamicPartitionsDefinition)
    assert events.group_names_by_key[events.key] == "analytics"
    assert events.op.pool == "cm_datacopy_analytics"
    assert len(list(repo.asset_checks_defs_by_key)) == 4
    assert repo.get_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    assert repo.get_sensor_def(PUBLISH_SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    published = repo.assets_defs_by_key[dg.AssetKey(["analytics", "analytics", "events", "published"])]
    assert published.partitions_def is None
    assert dg.AssetKey(["analytics", "analytics", "events"]) in repo.asset_graph.get(published.key).parent_keys


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
        dg.AssetKey([*EVENTS_KEY.path, "published"]),
        dg.AssetKey([*REGIONS_KEY.path, "published"]),
    }
    assert load_defs(path).get_job_def("plan_analytics") is not None
