"""End to end: the real dagster-webserver and dagster-daemon, storage in PostgreSQL (schema dagster).

Two sources are planned, both are backfilled at once through the GraphQL mutation the UI's
"Materialize all" uses (``launchPartitionBackfill`` with ``allPartitions``), one chunk fails once for
real (the test holds a row lock in its range longer than ``lock_timeout_seconds``), and the
auto-resume sensor copies it again. Then: every partition is materialized, the target equals the
source, and the ledger agrees with Dagster. The last test takes a screenshot of a partitions page.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs import build_definitions
from cm_datacopy.dagster_defs.instance import prepare_home
from cm_datacopy.dagster_defs.sensors import RESUME_ATTEMPT_TAG
from cm_datacopy_tests.dagster.helpers import EVENTS_ROWS, REGIONS_ROWS, chunk_held, plan, seed_source, source_config
from cm_datacopy_tests.helpers import REPO, fresh_pg_database, new_sf_database, pg_rows

pytestmark = pytest.mark.slow

# The second source publishes (shadow + swap, by the publish sensor); the first copies in place.
SECOND = {"source": "EVENTS", "target_schema": "copy_second", "chunk_key": "ID", "chunk_size": 2500, "mode": "publish"}
ASSETS = {
    "analytics": [["analytics", "copy", "events"], ["analytics", "copy", "regions"]],
    "second": [["second", "copy_second", "events"]],
}


@dataclass
class Stack:
    url: str
    home: Path
    config: Path
    target: dict[str, Any]
    workdir: Path
    start_daemon: Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait(what: str, condition: Any, timeout: float, procs: list[subprocess.Popen[bytes]] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[0]} exited with {proc.returncode} while waiting for {what}"
        with contextlib.suppress(OSError):
            if result := condition():
                return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def stack(snowflake_server, tmp_path_factory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e")
    sf_db = new_sf_database(snowflake_server)
    seed_source(snowflake_server, sf_db)
    with fresh_pg_database() as target, fresh_pg_database("cmdc_dg") as dagster_db:
        second = source_config(work / "second.yaml", snowflake_server, sf_db, target, source="second")
        import yaml

        second_body = yaml.safe_load(second.read_text())["sources"]["second"]
        second_body["tables"] = [SECOND]
        config = source_config(
            work / "cm_datacopy.yaml", snowflake_server, sf_db, target, workers=2, extra_sources={"second": second_body}
        )
        env = {**prepare_home(work / "home", dagster_db), CONFIG_ENV: str(config)}
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        bin_dir = Path(sys.executable).parent
        logs = {name: open(work / f"{name}.log", "wb") for name in ("webserver", "daemon")}  # noqa: SIM115
        procs: list[subprocess.Popen[bytes]] = []

        def start(name: str, *args: str) -> None:
            procs.append(
                subprocess.Popen(
                    [str(bin_dir / name), *args, "-w", "workspace.yaml"],
                    cwd=REPO,
                    env={**os.environ, **env},
                    stdout=logs[name.split("-")[1]],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

        # The daemon starts when the test asks: its backfill loop runs every 30 s, and its first
        # iteration is at start, so starting it after the backfills are launched saves up to 30 s.
        start("dagster-webserver", "-h", "127.0.0.1", "-p", str(port))
        try:
            with _environ(env):
                _wait(
                    "the webserver to load the code location",
                    lambda: len(_graphql(url, "{ assetNodes { id } }").get("data", {}).get("assetNodes") or []) == 6,
                    90,
                    procs,
                )
                yield Stack(url, work / "home", config, target, work, lambda: start("dagster-daemon", "run"))
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for log in logs.values():
                log.close()


LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def _chunk_state(target: dict[str, Any], source: str, table: str, index: int) -> tuple[str, int] | None:
    rows = pg_rows(
        target,
        "SELECT c.status, c.attempts FROM migration_status.migration_chunk_status c JOIN "
        "migration_status.migration_runs r USING (run_id) WHERE r.source = %s AND c.table_key = %s "
        "AND c.chunk_index = %s",
        (source, table, index),
    )
    return rows[0] if rows else None


def test_backfill_two_sources_one_chunk_fails_once_and_is_resumed(stack: Stack):
    instance = dg.DagsterInstance.get()
    defs = build_definitions(stack.config)
    runs = {source: plan(defs, instance, source) for source in ASSETS}
    keys = {
        tuple(path): instance.get_dynamic_partitions("__".join(path)) for paths in ASSETS.values() for path in paths
    }
    assert [len(k) for k in keys.values()] == [3, 1, 2]
    failing = keys[("analytics", "copy", "events")][1]

    with chunk_held(stack.target, 2500):
        for source, paths in ASSETS.items():
            result = _graphql(
                stack.url,
                LAUNCH_BACKFILL,
                {
                    "params": {
                        "assetSelection": [{"path": p} for p in paths],
                        "allPartitions": True,
                        "title": f"copy {source}",
                    }
                },
            )
            assert result["data"]["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", result
        stack.start_daemon()
        _wait(
            "chunk copy.events#1 to fail on the held lock",
            lambda: (_chunk_state(stack.target, "analytics", "copy.events", 1) or ("", 0))[0] == "failed",
            120,
        )
    # The lock is released: the sensor requests the chunk again and it copies.

    def everything_materialized() -> bool:
        done = all(
            instance.get_materialized_partitions(dg.AssetKey(list(path))) == set(partitions)
            for path, partitions in keys.items()
        )
        published = instance.get_latest_materialization_event(
            dg.AssetKey(["second", "copy_second", "events", "published"])
        )
        return done and published is not None and not instance.get_runs(RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES))

    _wait("every partition to be materialized and the second source published", everything_materialized, 180)

    # The sensor resumed the failed chunk: one run, attempt 1, for exactly that partition.
    [resumed] = instance.get_runs(RunsFilter(tags={RESUME_ATTEMPT_TAG: "1"}))
    assert resumed.status == dg.DagsterRunStatus.SUCCESS
    assert resumed.tags["dagster/partition"] == failing
    assert resumed.job_name == "copy__analytics__copy__events"
    failed_runs = instance.get_runs(RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert [r.tags.get("dagster/partition") for r in failed_runs] == [failing]
    assert _chunk_state(stack.target, "analytics", "copy.events", 1) == ("done", 2)

    # The target equals the source (planted row gone, nothing lost or doubled) in both sources' tables.
    for schema in ("copy", "copy_second"):
        assert pg_rows(
            stack.target,
            f"SELECT count(*), count(DISTINCT body), count(*) FILTER (WHERE body LIKE 'planted%%') "
            f"FROM {schema}.events",
        ) == [(EVENTS_ROWS, EVENTS_ROWS, 0)]
    assert pg_rows(stack.target, "SELECT count(*) FROM copy.regions") == [(REGIONS_ROWS,)]

    # The ledger agrees with Dagster: both runs completed, done chunks are the materialized partitions.
    ledger_runs = dict(
        pg_rows(
            stack.target, "SELECT run_id, status || '/' || resume_attempt_count FROM migration_status.migration_runs"
        )
    )
    assert ledger_runs == {runs["analytics"]: "completed/1", runs["second"]: "completed/0"}
    for path in keys:
        source, schema, table = path
        done = pg_rows(
            stack.target,
            "SELECT chunk_index FROM migration_status.migration_chunk_status WHERE run_id = %s AND table_key = %s "
            "AND status = 'done' ORDER BY chunk_index",
            (runs[source], f"{schema}.{table}"),
        )
        tag = runs[source].rsplit("-", 1)[1]
        assert {f"{tag}-{i:05d}" for (i,) in done} == instance.get_materialized_partitions(dg.AssetKey(list(path)))


def _chromium() -> str | None:
    if found := shutil.which("chromium"):
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=600)
    return shutil.which("chromium")


def test_screenshot_of_the_partitions_page(stack: Stack):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed and could not be installed with apt-get (needs root and a network)")
    _graphql(stack.url, "mutation { setNuxSeen }")  # as a user who closed the "join the community" dialog
    out = stack.workdir / "dagster-partitions.png"
    partition = dg.DagsterInstance.get().get_dynamic_partitions("analytics__copy__events")[1]
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                "--window-size=1600,1000",
                "--virtual-time-budget=15000",
                f"{stack.url}/assets/analytics/copy/events?view=partitions&partition={partition}",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert out.is_file() and out.stat().st_size > 20_000, "the screenshot is missing or blank"
    print(f"screenshot: {out}")  # docs/dagster-partitions.png is a copy of one
