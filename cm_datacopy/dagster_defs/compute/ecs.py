"""Chunks on AWS ECS: one task per chunk through ``PipesECSClient``.

The task runs the worker image's ``python3 -m cm_datacopy.workers.ecs`` with the chunk request in its
environment. Reports travel through S3 when ``messages_bucket`` is set, else through the container's
CloudWatch log stream (the ``awslogs`` driver is required then).

Three gaps of ``PipesECSClient`` (dagster-aws 0.29) are closed here:

* RunTask can answer without a task, listing ``failures`` (no capacity, a missing attribute…); the
  client then fails with an ``IndexError`` that loses the reason. ``_CheckedEcsClient`` raises an error
  naming it first.
* A container's non-zero exit becomes an error without its reason: the worker exits 0 once it has
  reported (even a failure), and for a crash the dispatcher reads the stop reason from DescribeTasks.
* For every container the client starts a log-forwarding thread that polls GetLogEvents without pause
  and never stops after its task ends; ``_MessagesOnlyCloudWatchReader`` does not start it (the Pipes
  messages, logs included, are read all the same; the container's raw output stays in CloudWatch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
from typing import Any

import boto3
import botocore.exceptions
from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesECSClient, PipesS3MessageReader

from cm_datacopy.chunk import ChunkResult, ChunkTask
from cm_datacopy.config import EcsCompute, SourceConfig
from cm_datacopy.dagster_defs.compute.pipes import PipesDispatcher, failed, reported_result
from cm_datacopy.workers.protocol import REQUEST_ENV, ChunkRequest

WORKER_COMMAND = ["python3", "-m", "cm_datacopy.workers.ecs"]
OVERRIDES_LIMIT = 8192  # RunTask's limit on the overrides' JSON; Pipes adds about 600 characters
# RunTask failure reasons that another attempt can get past (capacity, agents); others are settings.
_RETRYABLE_REASONS = ("RESOURCE:", "AGENT", "Capacity is unavailable", "Throttl", "ServiceUnavailable")
_RETRYABLE_CODES = {"ThrottlingException", "ServerException", "LimitExceededException"}


class RunTaskFailed(RuntimeError):
    def __init__(self, failures: list[dict[str, Any]]) -> None:
        self.failures = failures
        reasons = "; ".join(" ".join(str(f.get(k)) for k in ("arn", "reason", "detail") if f.get(k)) for f in failures)
        super().__init__(f"ECS RunTask started no task: {reasons or 'no reason given'}")

    @property
    def retryable(self) -> bool:
        return bool(self.failures) and all(
            any(tag in (f.get("reason") or "") for tag in _RETRYABLE_REASONS) for f in self.failures
        )


class _CheckedEcsClient:
    """The boto3 ECS client for one chunk: RunTask raises ``RunTaskFailed`` when no task started, and the
    task it starts is known (to explain its stop, or stop it when the step ends early)."""

    def __init__(self, client: Any, running: set[str], lock: threading.Lock) -> None:
        self._client = client
        self._running, self._lock = running, lock
        self.task_arn: str | None = None

    def run_task(self, **kwargs: Any) -> dict[str, Any]:
        response = self._client.run_task(**kwargs)
        if not response.get("tasks"):
            raise RunTaskFailed(response.get("failures") or [])
        self.task_arn = response["tasks"][0]["taskArn"]
        with self._lock:
            self._running.add(self.task_arn)
        return response

    def done(self) -> None:
        with self._lock:
            self._running.discard(self.task_arn or "")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _MessagesOnlyCloudWatchReader(PipesCloudWatchMessageReader):
    """Reads the Pipes messages from the container's log stream, without the per-container log-forwarding
    threads (see the module's docstring); waits out DescribeLogStreams throttling (5 calls/s per account)
    instead of failing the session."""

    def add_log_reader(self, log_reader: Any) -> None:
        return None

    def messages_are_readable(self, params: Any) -> bool:
        try:
            return super().messages_are_readable(params)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ThrottlingException":
                return False  # asked again a second later
            raise


class EcsDispatcher(PipesDispatcher):
    kind = "ECS"
    cancel_grace_seconds = 60.0  # stopped tasks end within stopTimeout; their sessions then close

    def __init__(self, settings: EcsCompute) -> None:
        self.settings = settings
        self.ecs_client = boto3.client("ecs", region_name=settings.region)
        self._running: set[str] = set()  # task ARNs of chunks in flight
        self._lock = threading.Lock()
        self.logs_client = boto3.client("logs", region_name=settings.region)
        self.s3_client = boto3.client("s3", region_name=settings.region) if settings.messages_bucket else None

    def _pipes_client(self, ecs: _CheckedEcsClient) -> PipesECSClient:
        if self.settings.messages_bucket:
            reader: Any = PipesS3MessageReader(bucket=self.settings.messages_bucket, client=self.s3_client, interval=10)
        else:
            reader = _MessagesOnlyCloudWatchReader(client=self.logs_client)
        return PipesECSClient(client=ecs, message_reader=reader)  # type: ignore[arg-type]

    def request_for(self, context: Any, cfg: SourceConfig, task: ChunkTask) -> ChunkRequest:
        request = super().request_for(context, cfg, task)
        return dataclasses.replace(request, time_limit_seconds=float(self.settings.timeout_seconds))

    def run_task_params(self, request: ChunkRequest) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {
            "cluster": s.cluster,
            "taskDefinition": s.task_definition,
            "launchType": s.launch_type,
            "count": 1,
            "startedBy": "cm_datacopy",
            "overrides": {
                "containerOverrides": [
                    {
                        "name": s.container,
                        "command": WORKER_COMMAND,
                        "environment": [{"name": REQUEST_ENV, "value": json.dumps(request.to_json())}],
                    }
                ]
            },
        }
        if s.subnets:
            params["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(s.subnets),
                    "securityGroups": list(s.security_groups),
                    "assignPublicIp": "ENABLED" if s.assign_public_ip else "DISABLED",
                }
            }
        if len(json.dumps(params["overrides"])) + 600 > OVERRIDES_LIMIT:
            raise ValueError(f"the RunTask overrides would pass ECS's {OVERRIDES_LIMIT}-character limit")
        return params

    def invoke(self, context: Any, cfg: SourceConfig, request: ChunkRequest) -> ChunkResult:
        task, s = request.task, self.settings
        where = f"ECS task definition {s.task_definition} on cluster {s.cluster}"
        ecs = _CheckedEcsClient(self.ecs_client, self._running, self._lock)
        limit = s.start_timeout_seconds + s.timeout_seconds
        waiter = {"Delay": s.poll_seconds, "MaxAttempts": math.ceil(limit / s.poll_seconds) + 1}
        try:
            invocation = self._pipes_client(ecs).run(
                context=context,
                run_task_params=self.run_task_params(request),  # type: ignore[arg-type]
                waiter_config=waiter,  # type: ignore[arg-type]
            )
        except RunTaskFailed as exc:
            return failed(task, str(exc), retryable=exc.retryable)
        except botocore.exceptions.WaiterError:
            self._stop([ecs.task_arn], "cm_datacopy: the chunk's task outlived start_timeout_seconds + timeout_seconds")
            return failed(
                task,
                f"{where}: chunk {task.name} did not end within start_timeout_seconds + timeout_seconds ({limit} s); "
                "its task was stopped",
                retryable=True,
            )
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            return failed(task, f"{where}: {code}: {exc}", retryable=code in _RETRYABLE_CODES)
        except botocore.exceptions.BotoCoreError as exc:
            return failed(task, f"{where}: cannot reach ECS: {exc}", retryable=True)
        except RuntimeError as exc:  # the task failed to start, or its container exited non-zero
            reason = f"{exc}; {self._stop_reason(ecs.task_arn)}".rstrip("; ")
            return failed(task, f"{where}: chunk {task.name}: {reason}", retryable=True)
        finally:
            ecs.done()
        url = invocation.metadata.get("AWS ECS Task URL")
        if url is not None:
            context.log.info(f"chunk {task.name} ran in ECS task {getattr(url, 'value', url)}")
        if s.messages_bucket:
            hint = f"no message reached s3://{s.messages_bucket}: check the task role may s3:PutObject there"
        else:
            hint = "check that the container logs through the awslogs driver and the task role reaches CloudWatch"
        return reported_result(request, invocation, where, hint)

    def _stop_reason(self, task_arn: str | None) -> str:
        """Why the task stopped, as DescribeTasks tells (exit codes, the containers' and the task's reasons)."""
        if task_arn is None:
            return ""
        try:
            (described,) = self.ecs_client.describe_tasks(cluster=self.settings.cluster, tasks=[task_arn])["tasks"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError):
            return ""
        parts = [
            f"container {c.get('name')} exit code {c.get('exitCode')}"
            + (f" ({c['reason']})" if c.get("reason") else "")
            for c in described.get("containers", [])
        ]
        if described.get("stoppedReason"):
            parts.append(f"task stopped: {described['stoppedReason']}")
        return "; ".join(parts)

    def _stop(self, arns: list[str | None], reason: str) -> None:
        for arn in filter(None, arns):
            with contextlib.suppress(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                self.ecs_client.stop_task(cluster=self.settings.cluster, task=arn, reason=reason[:255])

    def cancel(self, context: Any) -> None:
        with self._lock:
            arns: list[str | None] = list(self._running)
        if arns:
            context.log.warning(f"stopping {len(arns)} ECS task(s) of chunks still running")
            self._stop(arns, "cm_datacopy: the Dagster step ended")
