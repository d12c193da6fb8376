"""The deployment files in deploy/ fit the pinned Dagster and the dispatchers."""

from __future__ import annotations

import json
import shutil

import yaml

from cm_datacopy.dagster_defs.compute.ecs import WORKER_COMMAND
from cm_datacopy_tests.helpers import REPO

DEPLOY = REPO / "deploy"


def test_dagster_yaml_launches_runs_on_ecs(tmp_path, monkeypatch):
    # No public API validates an instance file without connecting to its storage: Dagster's own loader
    # (the instance schema) and the run launcher's config type do it here.
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_aws.ecs import EcsRunLauncher

    raw = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    for name in {v["env"] for v in _env_refs(raw)}:
        monkeypatch.setenv(name, "x")
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    launcher = process_config(EcsRunLauncher.config_type(), raw["run_launcher"]["config"])
    assert launcher.success, [e.message for e in launcher.errors or []]


def _env_refs(node: object) -> list[dict[str, str]]:
    if isinstance(node, dict):
        return [node] if set(node) == {"env"} else [r for v in node.values() for r in _env_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _env_refs(v)]
    return []


def test_worker_task_definition_fits_the_dispatcher():
    definition = json.loads((DEPLOY / "worker-task-definition.json").read_text())
    (container,) = definition["containerDefinitions"]
    assert container["command"] == WORKER_COMMAND
    logs = container["logConfiguration"]
    assert logs["logDriver"] == "awslogs" and {"awslogs-group", "awslogs-stream-prefix"} <= set(logs["options"])
    assert definition["networkMode"] == "awsvpc" and "FARGATE" in definition["requiresCompatibilities"]
    assert {e["name"] for e in container["environment"]} >= {"CM_DATACOPY_CONFIG"}
    assert all(s["valueFrom"].startswith("arn:aws:secretsmanager:") for s in container["secrets"])


def test_policies_are_documents():
    for path in (DEPLOY / "iam").glob("*.json"):
        document = json.loads(path.read_text())
        assert document.get("Version") == "2012-10-17" or "Rules" in document, path
