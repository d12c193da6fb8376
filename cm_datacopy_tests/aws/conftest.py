"""Fixtures of the AWS tests: fake credentials, a moto server, a planned source with real rows.

Nothing here reaches AWS: the credentials are fake, the instance metadata service is off, and every
AWS service the code under test calls is pointed, through botocore's per-service endpoint variables
(``AWS_ENDPOINT_URL_<SERVICE>``), at a local stand-in: moto's server, or ``FakeLambda``.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from cm_datacopy.config import SourceConfig
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.run.resume import start_or_resume
from cm_datacopy.standin.snowflake import StandinSnowflake
from cm_datacopy_tests.aws.ecs_agent import EcsAgent, python_env
from cm_datacopy_tests.aws.fake_lambda import FakeFunction, FakeLambda
from cm_datacopy_tests.helpers import REPO, SNOWFLAKE_PASSWORD_ENV, load, sf_execute, write_config

REGION = "us-east-1"
BUCKET = "cm-datacopy-pipes"
FUNCTION = "cm-datacopy-worker"
# Every process a test's stand-ins start (Lambda environments, ECS containers) and, through the Dagster
# stack's environment, every process of the stack carries this variable: one look at /proc finds them all.
PROCESS_MARK = "CM_DATACOPY_TEST_PROCESS_MARK"
EVENTS_ROWS = 5_000
EVENTS_CHUNK = 2_000  # 3 chunks
# In place: each chunk lands in copy.events as it commits.
EVENTS_TABLE = {
    "source": "EVENTS",
    "target_schema": "copy",
    "chunk_key": "ID",
    "chunk_size": EVENTS_CHUNK,
    "mode": "in_place",
}


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def moto_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server (ECS, EC2, CloudWatch Logs, S3, Secrets Manager), the endpoint of those services."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()  # global state
    for service in ("ECS", "EC2", "CLOUDWATCH_LOGS", "S3", "SECRETS_MANAGER"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", url)
    yield url
    server.stop()


def aws_env() -> dict[str, str]:
    """The AWS variables a worker process gets: the fake credentials and the stand-ins' endpoints (and the
    test's process mark, if it set one)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k == PROCESS_MARK}


@pytest.fixture
def process_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh value of ``PROCESS_MARK`` in this process's environment, so every process started from
    here on (stand-ins' workers, a Dagster stack) carries it; ``processes_with_env`` finds leftovers."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(PROCESS_MARK, value)
    return value


def lambda_compute(timeout: int = 120, margin: int = 10, **settings: Any) -> dict[str, Any]:
    """A source's settings for chunks on the function ``FUNCTION`` (``timeout`` is the function's)."""
    return {
        "compute": {
            "kind": "lambda",
            "chunk_max_seconds": timeout - margin,
            "lambda": {
                "function_name": FUNCTION,
                "region": REGION,
                "timeout_seconds": timeout,
                "deadline_margin_seconds": margin,
                **settings,
            },
        },
        "chunk_timeout_seconds": timeout + 60,
    }


@contextlib.contextmanager
def serve_lambda(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], timeout: float = 120, **function: Any
) -> Iterator[FakeLambda]:
    """``FUNCTION`` on a ``FakeLambda`` (the function's ``environment`` as a deployer sets it), its endpoint
    in ``AWS_ENDPOINT_URL_LAMBDA`` for the clients (and processes) created from now on."""
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **aws_env()}
    fn = FakeFunction(timeout_seconds=timeout, environment=environment, **function)
    with FakeLambda({FUNCTION: fn}, base) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", server.url)
        yield server


@dataclass
class Planned:
    """A source on the stand-ins with one planned run: EVENTS (5,000 rows, 3 chunks, in place)."""

    config: Path
    cfg: SourceConfig
    run_id: str
    table_key: str
    pg: dict[str, Any]

    def tasks(self) -> list[Any]:
        from cm_datacopy.chunk import ChunkTask

        with psycopg.connect(**self.pg) as conn:
            chunks = Ledger().chunks(conn, self.run_id, table_key=self.table_key)
        return [ChunkTask(self.cfg.name, self.run_id, c.table_key, c.index) for c in chunks]

    def chunk_rows(self) -> list[dict[str, Any]]:
        with psycopg.connect(**self.pg) as conn:
            return Ledger().chunk_rows(conn, self.run_id, self.table_key)

    def target_count(self) -> int:
        with psycopg.connect(**self.pg) as conn:
            return conn.execute("SELECT count(*) FROM copy.events").fetchone()[0]  # type: ignore[index]


@pytest.fixture
def plan_source(snowflake_server: StandinSnowflake, sf_db: str, pg_db: dict[str, Any], tmp_path: Path) -> Any:
    """``plan_source(compute={...}, **source settings)`` writes the config and plans a run of it."""
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"""CREATE TABLE EVENTS AS SELECT IFF(seq8() % 101 = 7, NULL, seq8())::NUMBER(38,0) AS ID,
            'payload ' || seq8() AS BODY FROM TABLE(GENERATOR(ROWCOUNT => {EVENTS_ROWS}))""",
    )

    def plan(**overrides: Any) -> Planned:
        overrides.setdefault("lock_timeout_seconds", 2)
        path = write_config(
            tmp_path / "cm_datacopy.yaml",
            snowflake_server,
            sf_db,
            pg_db,
            [
                {
                    "source": "EVENTS",
                    "target_schema": "copy",
                    "chunk_key": "ID",
                    "chunk_size": EVENTS_CHUNK,
                    "mode": "in_place",
                }
            ],
            **overrides,
        )
        cfg = load(path).source("analytics")
        with SourceLock(cfg), psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
            run = start_or_resume(cfg, pg)
        return Planned(path, cfg, run.run_id, "copy.events", pg_db)

    return plan


def worker_env(planned: Planned, **extra: str) -> dict[str, str]:
    """What a deployer gives a worker: the config file's path and the secret the config names."""
    return {
        "CM_DATACOPY_CONFIG": str(planned.config),
        SNOWFLAKE_PASSWORD_ENV: os.environ[SNOWFLAKE_PASSWORD_ENV],
        **extra,
    }


# API operations whose IAM action has another name.
_IAM_ACTIONS = {"lambda:Invoke": "lambda:InvokeFunction", "s3:HeadObject": "s3:GetObject"}


def record_calls(*clients: Any) -> list[str]:
    """The IAM actions of the calls these boto3 clients make from now on."""
    calls: list[str] = []

    def record(model: Any, **kwargs: Any) -> None:
        action = f"{model.service_model.signing_name}:{model.name}"
        calls.append(_IAM_ACTIONS.get(action, action))

    for client in clients:
        if client is not None:
            client.meta.events.register("before-call", record)
    return calls


def allowed_actions(policy: str) -> set[str]:
    document = json.loads((REPO / "deploy" / "iam" / policy).read_text())
    actions: set[str] = set()
    for statement in document["Statement"]:
        actions.update([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    return actions


# ---- ECS: a cluster in moto, the worker's task definition, the agent that runs its tasks ----------------

CLUSTER, FAMILY, CONTAINER, LOG_GROUP = "cm-datacopy", "cm-datacopy-worker", "worker", "/ecs/cm-datacopy-worker"


@pytest.fixture
def ecs(moto_url: str) -> Iterator[dict[str, Any]]:
    """A cluster, a VPC with a private subnet and a security group; the worker's task definition is
    registered by ``ecs_compute`` (its environment names the test's config file)."""
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto needs it for awsvpc ENIs
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="cm-datacopy-worker", Description="worker", VpcId=vpc)["GroupId"]
    boto3.client("ecs").create_cluster(clusterName=CLUSTER)
    yield {"subnet": subnet, "group": group, "url": moto_url}


def ecs_compute(ecs: dict[str, Any], timeout: int = 120, margin: int = 10, **settings: Any) -> dict[str, Any]:
    return {
        "compute": {
            "kind": "ecs",
            "chunk_max_seconds": timeout - margin,
            "ecs": {
                "cluster": CLUSTER,
                "task_definition": FAMILY,
                "container": CONTAINER,
                "region": REGION,
                "subnets": [ecs["subnet"]],
                "security_groups": [ecs["group"]],
                "timeout_seconds": timeout,
                "deadline_margin_seconds": margin,
                "start_timeout_seconds": 30,
                "poll_seconds": 1,
                **settings,
            },
        },
        "chunk_timeout_seconds": timeout + 60,
    }


def register_worker(config: Path) -> None:
    """The worker's task definition as docs/deploy-ecs.md describes it: awslogs, the config file's path in
    its environment, the Snowflake password from Secrets Manager."""
    secret = boto3.client("secretsmanager").create_secret(
        Name="cm-datacopy/snowflake-password", SecretString=os.environ[SNOWFLAKE_PASSWORD_ENV]
    )["ARN"]
    boto3.client("ecs").register_task_definition(
        family=FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="4096",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cm-datacopy-worker:test",
                "memory": 4096,  # moto wants a container-level memory
                "essential": True,
                "environment": [{"name": "CM_DATACOPY_CONFIG", "value": str(config)}],
                "secrets": [{"name": SNOWFLAKE_PASSWORD_ENV, "valueFrom": secret}],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": LOG_GROUP,
                        "awslogs-region": REGION,
                        "awslogs-stream-prefix": "chunk",
                        "awslogs-create-group": "true",
                    },
                },
            }
        ],
    )


@pytest.fixture
def agent(ecs: dict[str, Any]) -> Iterator[EcsAgent]:
    with EcsAgent(ecs["url"], REGION, {**python_env(), "HOME": os.environ.get("HOME", "/tmp"), **aws_env()}) as a:
        yield a
