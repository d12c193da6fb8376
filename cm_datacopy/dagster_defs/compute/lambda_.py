"""Chunks on AWS Lambda: one synchronous invocation per chunk through ``PipesLambdaClient``.

The boto3 client waits longer than the function can run and never sends an invoke twice: botocore's
defaults (a 60 s read timeout, then retries) would re-send a long synchronous invoke while the first
one keeps running, copying the chunk two or three times at once. ``tcp_keepalive`` keeps the idle
connection alive through NAT gateways, which cut it after 350 s (the host's
``net.ipv4.tcp_keepalive_time`` must be below that: docs/deploy-lambda.md).

Reports travel through S3 when ``messages_bucket`` is set, else in the 4 KB log tail the invoke returns
(anything logged after the report, e.g. by a Lambda extension, pushes it out: the chunk then fails as
"report lost" and is retried).
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config
from dagster_aws.pipes import PipesLambdaClient, PipesLambdaLogsMessageReader, PipesS3MessageReader

from cm_datacopy.chunk import ChunkResult
from cm_datacopy.config import LambdaCompute, SourceConfig
from cm_datacopy.dagster_defs.compute.pipes import PipesDispatcher, failed, reported_result
from cm_datacopy.workers.protocol import ChunkRequest

# Error codes of Invoke worth another attempt (throttling, capacity, a function still being updated).
_RETRYABLE_CODES = {
    "TooManyRequestsException",
    "ServiceException",
    "ResourceNotReadyException",
    "ResourceConflictException",
    "EC2ThrottledException",
    "EC2UnexpectedException",
    "ENILimitReachedException",
    "SubnetIPAddressLimitReachedException",
}


def client_config(settings: LambdaCompute) -> Config:
    return Config(
        region_name=settings.region,
        read_timeout=settings.timeout_seconds + 60,
        connect_timeout=10,
        retries={"total_max_attempts": 1},
        tcp_keepalive=True,
        max_pool_connections=64,  # workers ≤ 64 invocations at once
    )


class LambdaDispatcher(PipesDispatcher):
    kind = "Lambda"

    def __init__(self, settings: LambdaCompute) -> None:
        self.settings = settings
        self.lambda_client = boto3.client("lambda", config=client_config(settings))
        self.s3_client = boto3.client("s3", region_name=settings.region) if settings.messages_bucket else None

    def _pipes_client(self) -> PipesLambdaClient:
        if self.settings.messages_bucket:
            reader: Any = PipesS3MessageReader(bucket=self.settings.messages_bucket, client=self.s3_client, interval=10)
        else:
            reader = PipesLambdaLogsMessageReader()
        return PipesLambdaClient(client=self.lambda_client, message_reader=reader)

    def invoke(self, context: Any, cfg: SourceConfig, request: ChunkRequest) -> ChunkResult:
        task, name = request.task, self.settings.function_name
        where = f"Lambda function {name}"
        try:
            invocation = self._pipes_client().run(function_name=name, event=request.to_json(), context=context)
        except botocore.exceptions.ReadTimeoutError:
            return failed(
                task,
                f"{where} did not answer within {self.settings.timeout_seconds + 60} s for chunk {task.name}; the "
                "invocation may still be running (its attempt fence keeps it from committing over a newer one)",
                retryable=True,
            )
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            return failed(task, f"{where}: invoke refused ({code}): {exc}", retryable=code in _RETRYABLE_CODES)
        except botocore.exceptions.BotoCoreError as exc:
            return failed(task, f"{where}: cannot invoke: {exc}", retryable=True)
        except Exception as exc:
            error = function_error(exc)
            if error is None:
                raise
            return failed(task, f"{where} failed on chunk {task.name}: {self._explain(error)}", retryable=True)
        if self.settings.messages_bucket:
            hint = (
                f"no message reached s3://{self.settings.messages_bucket}: check the function's role may "
                "s3:PutObject there"
            )
        else:
            hint = (
                "the invoke's log tail holds only the last 4 KB of the log and the report was not in it; set "
                "compute.lambda.messages_bucket so reports travel through S3"
            )
        return reported_result(request, invocation, where, hint)

    def _explain(self, error: dict[str, Any]) -> str:
        kind, message = error.get("errorType") or error["function_error"], error.get("errorMessage") or ""
        if kind == "Sandbox.Timedout":
            return (
                f"the function timed out (timeout_seconds {self.settings.timeout_seconds}) before the chunk's own "
                f"deadline; nothing of it committed (PostgreSQL ends its transaction). {message}"
            ).strip()
        return f"{kind}: {message}".strip()


def function_error(exc: Exception) -> dict[str, Any] | None:
    """The error of a failed invocation, from ``PipesLambdaClient``'s exception
    (``Lambda Function Error (<kind>):\\n<payload>``); None for any other exception."""
    head, _, body = str(exc).partition("\n")
    if not head.startswith("Lambda Function Error"):
        return None
    kind = head[head.find("(") + 1 : head.rfind(")")] if "(" in head else "Unhandled"
    try:
        payload = json.loads(body) if body.strip() else {}
    except ValueError:
        payload = {"errorMessage": body.strip()}
    return {"function_error": kind, **(payload if isinstance(payload, dict) else {"errorMessage": str(payload)})}
