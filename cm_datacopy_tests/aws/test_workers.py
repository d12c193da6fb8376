"""The worker entry points on their own: outside Pipes (a request sent by hand), bad requests, a config
that differs from the Dagster side's, secrets from Secrets Manager, and no Dagster import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import boto3
import pytest

from cm_datacopy.errors import ConfigError
from cm_datacopy.workers import lambda_handler
from cm_datacopy.workers.protocol import BadRequest, ChunkRequest
from cm_datacopy.workers.secrets_manager import export_secrets
from cm_datacopy_tests.aws.conftest import Planned, aws_env, worker_env
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV


def request(planned: Planned, index: int, **extra: Any) -> dict[str, Any]:
    task = next(t for t in planned.tasks() if t.chunk_index == index)
    return ChunkRequest(task, planned.cfg.fingerprint(), **extra).to_json()


def ecs_main(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_datacopy.workers.ecs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **aws_env(), **env},
    )


def test_ecs_entry_point_outside_pipes(plan_source):
    planned = plan_source()
    done = ecs_main({**worker_env(planned), "CM_DATACOPY_CHUNK": json.dumps(request(planned, 1))})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["outcome"] == "copied" and summary["rows"] == planned.target_count() > 0
    other = dict(request(planned, 2), config_fingerprint="0" * 16)
    refused = ecs_main({**worker_env(planned), "CM_DATACOPY_CHUNK": json.dumps(other)})
    assert refused.returncode == 1 and json.loads(refused.stdout.strip().splitlines()[-1])["outcome"] == "failed"
    bad = ecs_main(worker_env(planned), "--request", '{"task": {}}')
    assert bad.returncode == 2 and "needs 'task' with source, run_id, table_key and chunk_index" in bad.stderr
    assert ecs_main(worker_env(planned)).returncode == 2


def test_lambda_handler_invoked_by_hand(plan_source, monkeypatch):
    """Without Pipes parameters the handler copies and returns the ChunkResult (as from the console)."""
    planned = plan_source()
    for name, value in worker_env(planned).items():
        monkeypatch.setenv(name, value)

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 60_000

    by_hand = {"task": {k: v for k, v in request(planned, 0)["task"].items() if k != "fence"}}  # as in the docs
    result = lambda_handler.handler(by_hand, Context())
    assert result["outcome"] == "copied" and result["rows"] == planned.target_count()
    assert 25 < result["task"]["deadline"] - time.time() <= 30  # 60 s left, 30 s margin
    mismatch = lambda_handler.handler(dict(request(planned, 1), config_fingerprint="f" * 16), Context())
    assert mismatch["outcome"] == "failed" and mismatch["retryable"] is False
    assert "differs from the Dagster side's" in mismatch["error"] and "deploy the same config file" in mismatch["error"]
    with pytest.raises(BadRequest, match="chunk_index must be an integer"):
        lambda_handler.handler(
            {"task": {"source": "a", "run_id": "r", "table_key": "t", "chunk_index": "1"}, "config_fingerprint": "x"},
            Context(),
        )


def test_secrets_manager_errors_name_the_fix_not_the_value(moto_url, monkeypatch):
    client = boto3.client("secretsmanager")
    client.create_secret(Name="not-json", SecretString="hunter2-not-json")
    client.create_secret(Name="good", SecretString=json.dumps({"CM_TEST_A": "s3cr3t-value"}))
    monkeypatch.setenv("CM_DATACOPY_SECRETS", "good")
    monkeypatch.delenv("CM_TEST_A", raising=False)
    assert export_secrets() == ["CM_TEST_A"] and os.environ["CM_TEST_A"] == "s3cr3t-value"
    monkeypatch.setenv("CM_DATACOPY_SECRETS", "not-json")
    with pytest.raises(ConfigError, match="must hold a JSON object of environment variable names") as bad:
        export_secrets()
    assert "hunter2" not in str(bad.value)
    monkeypatch.setenv("CM_DATACOPY_SECRETS", "missing")
    with pytest.raises(ConfigError, match=r"ResourceNotFoundException.*secretsmanager:GetSecretValue"):
        export_secrets()


def test_workers_do_not_import_dagster():
    code = (
        "import sys, cm_datacopy.workers.lambda_handler, cm_datacopy.workers.ecs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_aws', 'dagster_shared')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_password_travels_only_through_the_secret(plan_source, moto_url, monkeypatch):
    """A worker whose environment lacks the password gets it from CM_DATACOPY_SECRETS."""
    planned = plan_source()
    env = {"CM_DATACOPY_CONFIG": str(planned.config)}
    without = ecs_main({**env, "CM_DATACOPY_CHUNK": json.dumps(request(planned, 0))})
    assert without.returncode == 1
    boto3.client("secretsmanager").create_secret(
        Name="worker", SecretString=json.dumps({SNOWFLAKE_PASSWORD_ENV: os.environ[SNOWFLAKE_PASSWORD_ENV]})
    )
    with_secret = ecs_main(
        {**env, "CM_DATACOPY_SECRETS": "worker", "CM_DATACOPY_CHUNK": json.dumps(request(planned, 0))}
    )
    assert with_secret.returncode == 0, with_secret.stderr
    assert os.environ[SNOWFLAKE_PASSWORD_ENV] not in with_secret.stdout + with_secret.stderr
