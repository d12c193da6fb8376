"""A real dagster-webserver and dagster-daemon, for the end-to-end test, the screenshots and the benchmark.

Each starts in a session of its own, so each is the leader of a process group holding everything it
spawns: the webserver's and the daemon's code servers (``dagster api grpc``) and, under the daemon's,
the run workers and their log tailers. Leaders exit before their children, so stopping is: SIGTERM
to each group, wait until the group is empty (zombies aside), SIGKILL whatever is left, and report
it. ``stop`` runs on every exit of the ``with`` block, a failing test's included.

Waits poll a condition until a deadline the caller sizes to the work (``wait``); a process of the
stack that dies meanwhile ends the wait at once with its log's tail.

The daemon is the one cm_datacopy ships (``cm-datacopy dagster-daemon``: its backfill loop wakes every
second, so a test waits for work, not for a timer); ``fast_daemon=False`` starts ``dagster-daemon`` as
Dagster ships it (a 30 s backfill loop).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cm_datacopy_tests.helpers import REPO

BIN = Path(sys.executable).parent

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""

LOCATION = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"

PARTITION_STATUS = """
query P($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions
        }
      }
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses { ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions } }
          }
        }
      }
    }
  }
}"""

RUN_STATUS = "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state_and_group(pid: int) -> tuple[str, int] | None:
    """A process's state letter and process group, from /proc (None: it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
    return fields[0], int(fields[2])


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    return [pid for pid in _pids() if (s := _state_and_group(pid)) and s[1] == pgid and s[0] != "Z"]


def processes_with_env(key: str, value: str) -> list[int]:
    """Live processes (this one aside) whose environment has ``key=value``: finds any process a stack
    started, even one that left its groups, since a process inherits its parent's environment."""
    needle = f"{key}={value}".encode()
    found = []
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid != os.getpid() and needle in environ and (s := _state_and_group(pid)) and s[0] != "Z":
            found.append(pid)
    return found


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class DagsterStack:
    def __init__(
        self, workdir: Path, env: dict[str, str], *, fast_daemon: bool = True, port: int | None = None
    ) -> None:
        """``port``: a webserver someone else started there (its GraphQL only; this stack starts nothing)."""
        self.workdir = workdir
        self.env = {**os.environ, **env}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fast_daemon = fast_daemon
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.leftovers: list[int] = []

    # ---- processes --------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start_webserver(self, ready: Callable[[], Any], timeout: float = 180) -> None:
        """Start the webserver; return once ``ready()`` (a GraphQL question) is true."""
        self._start(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", "workspace.yaml"],
        )
        self.wait("the webserver to load the code location", ready, timeout)

    def start_daemon(self) -> None:
        """Start the daemon (runs queued runs, backfills and sensors), unless it is running."""
        if "daemon" in self.procs:
            return
        if self.fast_daemon:
            argv = [sys.executable, "-m", "cm_datacopy.dagster_defs.daemon", "run", "-w", "workspace.yaml"]
        else:
            argv = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
        self._start("daemon", argv)

    def stop(self, timeout: float = 60) -> list[int]:
        """SIGTERM every group, wait until each is empty, SIGKILL what is left; returns what had to be killed."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            while group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if left := group_members(proc.pid):
                self.leftovers += left
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        return self.leftovers

    def alive(self) -> list[int]:
        """Every live process the stack started, at any depth, in its groups or not (none, after ``stop``)."""
        in_groups = [pid for proc in self.procs.values() for pid in group_members(proc.pid)]
        return sorted({*in_groups, *processes_with_env("DAGSTER_HOME", self.env["DAGSTER_HOME"])})

    def __enter__(self) -> DagsterStack:
        # A SIGTERM to this process (a CI timeout, `kill`) must still stop the stack: make it an exception.
        self._sigterm = signal.getsignal(signal.SIGTERM)
        if self._sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            signal.signal(signal.SIGTERM, self._sigterm)

    # ---- GraphQL and waiting ------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = json.loads(response.read())
        assert not data.get("errors"), data["errors"]
        return data["data"]

    def wait(
        self,
        what: str,
        condition: Callable[[], Any],
        timeout: float,
        every: float = 0.5,
        explain: Callable[[], str] | None = None,
    ) -> Any:
        """``condition()`` once true. A condition that fails (an AssertionError: waiting is pointless), a
        timeout, or a process of the stack that dies ends the wait; ``explain()``, if given, then says what
        the stack was doing."""

        def failed(message: str) -> AssertionError:
            if explain is None:
                return AssertionError(message)
            try:
                return AssertionError(f"{message}\n{explain()}")
            except Exception as exc:  # the explanation must not hide the failure
                return AssertionError(f"{message}\n(could not explain: {type(exc).__name__}: {exc})")

        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"dagster {name} exited ({proc.returncode}) while waiting for {what}:\n{tail}")
            try:
                with contextlib.suppress(OSError):
                    if result := condition():
                        return result
            except AssertionError as exc:
                raise failed(f"while waiting for {what}: {exc}") from None
            if time.monotonic() > deadline:
                raise failed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def launch_backfill(self, asset_paths: list[list[str]], title: str, partitions: list[str] | None = None) -> str:
        """What the UI's "Materialize" → "Launch backfill" sends: every partition (or the given ones)."""
        params: dict[str, Any] = {"assetSelection": [{"path": p} for p in asset_paths], "title": title}
        if partitions is None:
            params["allPartitions"] = True
        else:
            params["partitionNames"] = partitions
        result = self.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def launch_job(self, job: str, run_config: dict[str, Any] | None = None) -> str:
        """What the UI's job page → "Launch run" sends; returns the run id."""
        [repo] = self.graphql(LOCATION)["repositoriesOrError"]["nodes"]
        selector = {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"], "jobName": job}
        result = self.graphql(LAUNCH_RUN, {"params": {"selector": selector, "runConfigData": run_config or {}}})
        launched = result["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def run_status(self, run_id: str) -> str | None:
        return self.graphql(RUN_STATUS, {"id": run_id})["runOrError"].get("status")

    def wait_run(self, run_id: str, timeout: float, every: float = 0.5) -> None:
        """Wait for a run to succeed; a run that fails or is canceled ends the wait at once."""

        def ended() -> bool:
            status = self.run_status(run_id)
            assert status not in ("FAILURE", "CANCELED"), f"run {run_id} ended {status}"
            return status == "SUCCESS"

        self.wait(f"run {run_id} to succeed", ended, timeout, every)

    def partition_status(self, path: list[str]) -> dict[str, Any]:
        """An asset's partitions and its checks' partitions, as the UI shows them."""
        node = self.graphql(PARTITION_STATUS, {"key": {"path": path}})["assetNodeOrError"]
        checks = {c["name"]: c["partitionStatuses"] for c in node["assetChecksOrError"]["checks"]}
        return {**node["assetPartitionStatuses"], "checks": checks}
