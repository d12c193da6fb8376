"""Runs the tasks moto's ECS accepts, for real: moto alone executes nothing and reports exit code 0.

The dispatcher's real boto3 clients talk to a moto server (ECS, CloudWatch Logs, S3, Secrets Manager);
this agent, in the test's process, plays the container runtime:

* it freezes moto's own task progression, so a task stays RUNNING until its process ends;
* for each new task it starts the container's command (the override's, else the task definition's)
  through the image's entry point script (``docker/entrypoint.sh``), with the task definition's
  environment, its ``secrets`` read from Secrets Manager, and the override's environment;
* it ships the process's output, line by line as it comes, to the ``awslogs`` stream
  ``<awslogs-stream-prefix>/<container>/<task id>``;
* when the process ends it sets the task STOPPED with the real exit code and stop code; StopTask sends
  the process SIGTERM (SIGKILL after ``stopTimeout``), as ECS does;
* ``fail_to_start_next`` makes the next task stop with ``TaskFailedToStart`` and run nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

ACCOUNT = "123456789012"
REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


@dataclass
class ContainerRun:
    task_arn: str
    command: list[str]
    env: dict[str, str]
    log_group: str | None
    log_stream: str | None
    proc: subprocess.Popen[str] | None = None
    exit_code: int | None = None
    stop_requested: bool = False
    lines: list[str] = field(default_factory=list)


class EcsAgent:
    def __init__(self, moto_url: str, region: str, base_env: dict[str, str]) -> None:
        self.region = region
        self.base_env = base_env
        self.logs = boto3.client("logs", endpoint_url=moto_url, region_name=region)
        self.secrets = boto3.client("secretsmanager", endpoint_url=moto_url, region_name=region)
        self.runs: dict[str, ContainerRun] = {}
        self.fail_to_start_next: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ecs-agent", daemon=True)

    def __enter__(self) -> EcsAgent:
        from moto.moto_api import state_manager

        state_manager.set_transition(model_name="ecs::task", transition={"progression": "manual", "times": 10**9})
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from moto.moto_api import state_manager

        self._stop.set()
        self._thread.join(10)
        for run in self.runs.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        state_manager.unset_transition(model_name="ecs::task")

    def wait_stopped(self, timeout: float = 120) -> None:
        """Until every container has ended and its end is recorded (exit code, task STOPPED): the process
        ends before its output is drained and its exit code read."""
        deadline = time.monotonic() + timeout
        while any(r.proc is not None and r.exit_code is None for r in self.runs.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("a container is still running")
            time.sleep(0.05)

    # ---- the runtime -----------------------------------------------------------------------------

    def _backend(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][self.region]

    def _watch(self) -> None:
        while not self._stop.is_set():
            backend = self._backend()
            for tasks in list(backend.tasks.values()):
                for arn, task in list(tasks.items()):
                    if arn not in self.runs:
                        try:
                            self._launch(backend, arn, task)
                        except Exception as exc:  # e.g. a secret that does not exist: ECS cannot start it
                            self.runs[arn] = ContainerRun(arn, [], {}, None, None)
                            self._mark_stopped(task, None, "TaskFailedToStart", f"{type(exc).__name__}: {exc}")
                    run = self.runs[arn]
                    stopping = task.desired_status == "STOPPED" and not run.stop_requested
                    if stopping and run.proc is not None and run.proc.poll() is None:
                        self._stop_container(task, run)
            time.sleep(0.05)

    def _launch(self, backend: Any, arn: str, task: Any) -> None:
        definition = backend.describe_task_definition(task.task_definition_arn)
        cdef = definition.container_definitions[0]
        override = next(
            (o for o in (task.overrides or {}).get("containerOverrides", []) if o.get("name") == cdef["name"]), {}
        )
        env = {e["name"]: e["value"] for e in cdef.get("environment") or []}
        for secret in cdef.get("secrets") or []:
            env[secret["name"]] = self.secrets.get_secret_value(SecretId=secret["valueFrom"])["SecretString"]
        env.update({e["name"]: e["value"] for e in override.get("environment") or []})
        options = (cdef.get("logConfiguration") or {}).get("options") or {}
        group = options.get("awslogs-group")
        stream = f"{options.get('awslogs-stream-prefix')}/{cdef['name']}/{arn.split('/')[-1]}" if group else None
        run = ContainerRun(arn, list(override.get("command") or cdef.get("command") or []), env, group, stream)
        self.runs[arn] = run
        for container in task.containers:
            container.exitCode = None  # ECS reports no exit code before the container stops
        if self.fail_to_start_next is not None:
            reason, self.fail_to_start_next = self.fail_to_start_next, None
            self._mark_stopped(task, None, "TaskFailedToStart", reason)
            return
        if group:
            with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
                self.logs.create_log_group(logGroupName=group)
            self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
        run.proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), *run.command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**self.base_env, **env},
            text=True,
        )
        threading.Thread(target=self._pump, args=(task, run), daemon=True).start()

    def _pump(self, task: Any, run: ContainerRun) -> None:
        assert run.proc is not None and run.proc.stdout is not None
        batch: list[str] = []
        last = time.monotonic()
        for line in run.proc.stdout:  # awslogs: one event per line, shipped while the container runs
            run.lines.append(line.rstrip("\n"))
            batch.append(line.rstrip("\n"))
            if len(batch) >= 50 or time.monotonic() - last > 0.2:
                self._ship(run, batch)
                batch, last = [], time.monotonic()
        self._ship(run, batch)
        code = run.proc.wait()
        exit_code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number
        if run.stop_requested:
            self._mark_stopped(task, exit_code, "UserInitiated", task.stopped_reason or "Task stopped by user")
        else:
            self._mark_stopped(task, exit_code, "EssentialContainerExited", "Essential container in task exited")
        run.exit_code = exit_code  # last: wait_stopped returns once it is set

    def _ship(self, run: ContainerRun, lines: list[str]) -> None:
        if lines and run.log_group:
            now = int(time.time() * 1000)
            self.logs.put_log_events(
                logGroupName=run.log_group,
                logStreamName=run.log_stream,
                logEvents=[{"timestamp": now, "message": line} for line in lines],
            )

    def _stop_container(self, task: Any, run: ContainerRun) -> None:
        """StopTask: SIGTERM now, SIGKILL after the container's stopTimeout (30 s by default)."""
        assert run.proc is not None
        run.stop_requested = True
        task.last_status = "DEACTIVATING"  # moto marked it STOPPED at once; ECS waits for the container
        run.proc.send_signal(signal.SIGTERM)

        def kill_later(proc: subprocess.Popen[str]) -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
                return
            proc.kill()

        threading.Thread(target=kill_later, args=(run.proc,), daemon=True).start()

    def _mark_stopped(self, task: Any, exit_code: int | None, stop_code: str, reason: str) -> None:
        for container in task.containers:
            container.last_status = "STOPPED"
            container.exitCode = exit_code
            container.runtime_id = container.runtime_id if hasattr(container, "runtime_id") else os.urandom(8).hex()
        task.stop_code = stop_code
        task.stopped_reason = reason
        task.desired_status = "STOPPED"
        task.last_status = "STOPPED"


def python_env() -> dict[str, str]:
    """What the worker image gives a process: this interpreter's ``python3`` first on the path."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
