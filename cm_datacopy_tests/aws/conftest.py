"""Fixtures of the AWS tests: fake credentials, a moto server, a planned source with real rows.

Nothing here reaches AWS: the credentials are fake, the instance metadata service is off, and every
AWS service the code under test calls is pointed, through botocore's per-service endpoint variables
(``AWS_ENDPOINT_URL_<SERVICE>``), at a local stand-in: moto's server, or ``FakeLambda``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cm_datacopy.config import SourceConfig
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.run.resume import start_or_resume
from cm_datacopy.standin.snowflake import StandinSnowflake
from cm_datacopy_tests.helpers import REPO, SNOWFLAKE_PASSWORD_ENV, load, sf_execute, write_config

REGION = "us-east-1"
BUCKET = "cm-datacopy-pipes"
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
    """The AWS variables a worker process gets: the fake credentials and the stand-ins' endpoints."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


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
