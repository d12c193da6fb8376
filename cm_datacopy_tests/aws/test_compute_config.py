"""The compute settings: one clear error naming the field and the fix; defaults that fit together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cm_datacopy.config import load_config
from cm_datacopy.errors import ConfigError

SOURCE = {
    "snowflake": {"account": "acme", "user": "COPIER", "password_env": "SF_PASSWORD", "database": "ANALYTICS"},
    "postgres": {"dbname": "target", "user": "copier"},
    "tables": [{"source": "EVENTS", "target_schema": "analytics", "chunk_key": "ID"}],
}
LAMBDA = {"function_name": "cm-datacopy-worker", "region": "eu-west-1"}
ECS = {"cluster": "c", "task_definition": "cm-datacopy-worker", "container": "worker", "region": "eu-west-1"}


def load(tmp_path: Path, **source: Any) -> Any:
    path = tmp_path / "cm_datacopy.yaml"
    path.write_text(yaml.safe_dump({"sources": {"analytics": {**SOURCE, **source}}}))
    return load_config(path).source("analytics")


def error(tmp_path: Path, **source: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **source)
    return str(caught.value)


def test_lambda_needs_a_chunk_timeout_longer_than_the_function_timeout(tmp_path):
    message = error(tmp_path, compute={"kind": "lambda", "lambda": LAMBDA})  # both 900 s by default
    assert "sources.analytics: chunk_timeout_seconds (900) must exceed compute.lambda.timeout_seconds (900)" in message
    assert "the Lambda function's timeout" in message and "at least 960" in message
    cfg = load(tmp_path, compute={"kind": "lambda", "lambda": LAMBDA}, chunk_timeout_seconds=960)
    assert cfg.compute.lambda_.timeout_seconds == 900 and cfg.compute.chunk_max_seconds == 450


def test_ecs_time_limit_and_network(tmp_path):
    assert "launch_type FARGATE needs subnets" in error(tmp_path, compute={"kind": "ecs", "ecs": ECS})
    ecs = {**ECS, "subnets": ["subnet-1"], "timeout_seconds": 1200}
    assert "must exceed compute.ecs.timeout_seconds (1200), the ECS chunk time limit" in error(
        tmp_path, compute={"kind": "ecs", "ecs": ecs}
    )
    cfg = load(tmp_path, compute={"kind": "ecs", "ecs": {**ECS, "launch_type": "EC2"}})
    assert cfg.compute.ecs.timeout_seconds < cfg.chunk_timeout_seconds and not cfg.compute.ecs.subnets


@pytest.mark.parametrize(
    ("compute", "field", "fix"),
    [
        ({"kind": "lambda"}, "sources.analytics.compute", "kind: lambda needs a 'lambda' section"),
        ({"kind": "ecs"}, "sources.analytics.compute", "kind: ecs needs an 'ecs' section"),
        (
            {"kind": "lambda", "lambda": {**LAMBDA, "timeout_seconds": 901}},
            "sources.analytics.compute.lambda.timeout_seconds",
            "less than or equal to 900",
        ),
        (
            {"kind": "lambda", "lambda": {**LAMBDA, "timeout_seconds": 300}, "chunk_max_seconds": 290},
            "sources.analytics.compute",
            "chunk_max_seconds (290) must leave the chunk time to finish: at most "
            "lambda.timeout_seconds - deadline_margin_seconds (270)",
        ),
        (
            {"kind": "lambda", "lambda": {**LAMBDA, "timeout_seconds": 30, "deadline_margin_seconds": 30}},
            "sources.analytics.compute.lambda",
            "deadline_margin_seconds (30) must be below timeout_seconds (30)",
        ),
        ({"kind": "lambda", "lambda": {**LAMBDA, "memory": 2048}}, "compute.lambda.memory", "unknown field"),
        ({"kind": "ecs", "ecs": {**ECS, "launch_type": "fargate"}}, "compute.ecs.launch_type", "'FARGATE' or 'EC2'"),
    ],
)
def test_bad_compute_settings(tmp_path, compute, field, fix):
    message = error(tmp_path, compute=compute, chunk_timeout_seconds=960)
    assert f"{field}: " in message and fix in message, message
