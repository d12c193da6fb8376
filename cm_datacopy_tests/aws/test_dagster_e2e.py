"""End to end on AWS compute, without AWS: a backfill launched as the UI launches it, its chunks run by
our real workers on Lambda and ECS stand-ins, their reports back through Dagster Pipes.

The real ``dagster-webserver`` and ``dagster-daemon`` (``DagsterStack``, storage in PostgreSQL) load the
definitions of a source whose ``compute`` is ``lambda`` or ``ecs``. The daemon's run processes inherit
the ``AWS_ENDPOINT_URL_<SERVICE>`` variables, so their dispatchers' real boto3 clients invoke the
``FakeLambda`` (our handler in a child process, with the real event) or start tasks in moto that the
``EcsAgent`` runs (our ECS entry point, its output shipped to moto's CloudWatch Logs).

Lambda: one chunk's first attempt stalls in its COPY past the function's timeout and is killed there
(``Sandbox.Timedout``); its run fails, retryably; the auto-resume sensor requests that chunk again, and
its second attempt copies. ECS: every chunk in a container of its own. Then, for each: the target equals
the Snowflake stand-in row for row, every chunk's materialization carries its figures and checksums and
its check passed, the ledger agrees, the Snowflake password is nowhere in what Dagster stored, and no
process outlives the test (the stack, the Lambda environments, the containers), a failing test included.
"""

from __future__ import annotations

import contextlib
import decimal
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs import build_definitions
from cm_datacopy.dagster_defs.compute.ecs import WORKER_COMMAND
from cm_datacopy.dagster_defs.instance import prepare_home
from cm_datacopy.dagster_defs.reporting import CHECK_NAME
from cm_datacopy.dagster_defs.tags import RESUME_ATTEMPT
from cm_datacopy.standin.snowflake import StandinSnowflake
from cm_datacopy.workers.protocol import REQUEST_ENV
from cm_datacopy_tests.aws.conftest import (
    PROCESS_MARK,
    Planned,
    ecs_compute,
    lambda_compute,
    register_worker,
    serve_lambda,
)
from cm_datacopy_tests.aws.ecs_agent import EcsAgent
from cm_datacopy_tests.aws.step import slow_chunk
from cm_datacopy_tests.dagster.helpers import EVENTS_ROWS, REGIONS_ROWS, plan, seed_source, source_config
from cm_datacopy_tests.dagster.stack import DagsterStack, processes_with_env
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, fresh_pg_database, load, pg_rows, sf_execute

pytestmark = pytest.mark.slow

SOURCE = "analytics"
TABLES = {"copy.events": "EVENTS", "copy.regions": "REGIONS"}  # target → Snowflake table
ROWS = {"copy.events": EVENTS_ROWS, "copy.regions": REGIONS_ROWS}
PATHS = {table: [SOURCE, *table.split(".")] for table in TABLES}
CHUNKS = 4  # copy.events in 3 chunks, copy.regions in 1
# Deadlines grow with the work waited for, never a fixed sleep; generous for a loaded 2-core machine.
PER_CHUNK = 30.0
BASE = 120.0
# The Lambda function's timeout: long enough for a cold environment to import and copy a chunk on a
# loaded machine, short enough that the chunk killed at it does not make the test slow.
LAMBDA_TIMEOUT, LAMBDA_MARGIN = 20, 5
STALLED = 1  # copy.events chunk whose first attempt is killed at the timeout


@pytest.fixture(autouse=True)
def no_process_left(process_mark: str) -> Iterator[None]:
    """After every fixture's teardown (this one is set up first): no process the test started is alive."""
    yield
    assert not processes_with_env(PROCESS_MARK, process_mark), "a process of the test outlived it"


@dataclass
class Setup:
    work: Path
    sf: StandinSnowflake
    sf_db: str
    target: dict[str, Any]
    dagster_db: dict[str, Any]

    def config(self, **overrides: Any) -> Path:
        return source_config(self.work / "cm_datacopy.yaml", self.sf, self.sf_db, self.target, workers=4, **overrides)


@pytest.fixture
def setup(snowflake_server: StandinSnowflake, sf_db: str, tmp_path: Path) -> Iterator[Setup]:
    seed_source(snowflake_server, sf_db)
    with fresh_pg_database() as target, fresh_pg_database("cmdc_dg") as dagster_db:
        yield Setup(tmp_path, snowflake_server, sf_db, target, dagster_db)


@contextlib.contextmanager
def dagster_stack(
    setup: Setup, config: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DagsterStack, dg.DagsterInstance]]:
    """The webserver (loaded) and the stack's environment in this process too (for the instance and
    the in-process plan); the stack inherits this process's environment, AWS endpoints included. On
    exit, whatever happened: every process of the stack is gone and none had to be killed."""
    env = {**prepare_home(setup.work / "home", setup.dagster_db), CONFIG_ENV: str(config)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with DagsterStack(setup.work, env) as stack:
        stack.start_webserver(lambda: len(stack.graphql("{ assetNodes { id } }")["assetNodes"]) == 2 * len(TABLES))
        with dg.DagsterInstance.get() as instance:
            yield stack, instance
    assert not stack.alive(), "every process of the stack is gone"
    assert not stack.leftovers, f"processes outlived SIGTERM and had to be killed: {stack.leftovers}"


# ---- what both tests check -------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value as both sides can compare it (NUMBER(38,0) arrives as Decimal or int)."""
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _sorted_rows(rows: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((tuple(_plain(v) for v in row) for row in rows), key=repr)


def assert_target_equals_source(setup: Setup) -> None:
    for target, source in TABLES.items():
        snowflake = _sorted_rows(sf_execute(setup.sf, setup.sf_db, "USE SCHEMA PUBLIC", f"SELECT * FROM {source}"))
        schema, table = target.split(".")
        postgres = _sorted_rows(
            pg_rows(setup.target, sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table)))
        )
        assert len(snowflake) == ROWS[target]
        assert postgres == snowflake, f"{target} differs from Snowflake's {source}"


def partition_keys(instance: dg.DagsterInstance, table: str) -> list[str]:
    return instance.get_dynamic_partitions("__".join(PATHS[table]))


def all_green(stack: DagsterStack, instance: dg.DagsterInstance, setup: Setup) -> bool:
    """Every chunk partition of every table materialized and its check passed, as the UI shows them.
    Fails at once if the migration run failed (the auto-resume sensor gave up): nothing more will come."""
    for status, error in pg_rows(setup.target, "SELECT status, last_error FROM migration_status.migration_runs"):
        assert status != "failed", f"the migration run failed: {error}"
    for table in TABLES:
        keys = sorted(partition_keys(instance, table))
        status = stack.partition_status(PATHS[table])
        checks = status["checks"][CHECK_NAME]
        if sorted(status["materializedPartitions"]) != keys or sorted(checks["succeededPartitions"]) != keys:
            return False
    return True


def ledger_chunks(setup: Setup) -> dict[tuple[str, int], dict[str, Any]]:
    with psycopg.connect(**setup.target) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT c.* FROM migration_status.migration_chunk_status c "
            "JOIN migration_status.migration_runs r USING (run_id) WHERE r.source = %s",
            (SOURCE,),
        )
        return {(row["table_key"], row["chunk_index"]): row for row in cur.fetchall()}


def explainer(setup: Setup, instance: dg.DagsterInstance, workers: Callable[[], list[str]]) -> Callable[[], str]:
    """What a timed-out wait reports: the runs (with their failures), the ledger's chunks, the remote
    workers' invocations or tasks, and the auto-resume sensor's last words."""

    def explain() -> str:
        lines = ["Dagster runs:"]
        for run in reversed(instance.get_runs()):
            where = run.tags.get("dagster/partition") or run.tags.get("dagster/asset_partition_range_start", "")
            lines.append(
                f"  {run.run_id[:8]} {run.job_name} {run.status.value} {where} {dict(run.tags).get(RESUME_ATTEMPT, '')}"
            )
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
                data = entry.dagster_event.step_failure_data  # type: ignore[union-attr]
                text = data.user_failure_data.description if data.user_failure_data else data.error.message
                lines.append(f"    step failed: {(text or '')[:400]}")
        lines.append("ledger chunks (status, attempts, last error):")
        for (table, index), chunk in sorted(ledger_chunks(setup).items()):
            lines.append(f"  {table}#{index} {chunk['status']} {chunk['attempts']} {(chunk['last_error'] or '')[:200]}")
        lines.append("remote workers:")
        lines += [f"  {w}" for w in workers()]
        daemon = (setup.work / "daemon.log").read_text(errors="replace").splitlines()
        lines.append("auto-resume sensor:")
        lines += [f"  {line[-400:]}" for line in [x for x in daemon if "cm_datacopy_auto_resume" in x][-4:]]
        return "\n".join(lines)

    return explain


def events_of(instance: dg.DagsterInstance, kind: dg.DagsterEventType) -> list[dg.EventLogEntry]:
    return [e for run in instance.get_runs() for e in instance.all_logs(run.run_id, of_type=kind)]


def assert_chunks_reported(setup: Setup, instance: dg.DagsterInstance) -> None:
    """Each chunk's latest materialization carries its worker's figures (rows, checksums, attempt), equal
    to the ledger's; its check passed on the same checksums; its worker's Pipes log reached the run."""
    ledger = ledger_chunks(setup)
    latest: dict[tuple[str, str], dg.AssetMaterialization] = {}
    for entry in events_of(instance, dg.DagsterEventType.ASSET_MATERIALIZATION):
        m = entry.asset_materialization
        if m is not None and m.partition:
            latest[(m.asset_key.path[-2] + "." + m.asset_key.path[-1], m.partition)] = m
    evaluations: dict[tuple[str, str], Any] = {}
    for entry in events_of(instance, dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        assert evaluation.check_name == CHECK_NAME
        evaluations[(".".join(evaluation.asset_key.path[-2:]), evaluation.partition)] = evaluation
    pipes_logs = "\n".join(e.user_message for run in instance.get_runs() for e in instance.all_logs(run.run_id))
    for table in TABLES:
        keys = partition_keys(instance, table)
        assert sum(latest[(table, k)].metadata["rows"].value for k in keys) == ROWS[table]
        for key in keys:
            chunk = ledger[(table, int(key[:5]))]
            metadata = {name: value.value for name, value in latest[(table, key)].metadata.items()}
            assert chunk["status"] == "done"
            assert metadata["rows"] == chunk["rows_copied"] > 0, key
            assert metadata["attempt"] == chunk["attempts"], key
            assert metadata["source checksum"] == metadata["target checksum"] == str(chunk["source_checksum"]), key
            evaluation = evaluations[(table, key)]
            assert evaluation.passed, key
            assert evaluation.metadata["target checksum"].value == metadata["target checksum"], key
            assert f"copying chunk {table}#{int(key[:5]):05d}" in pipes_logs, f"no Pipes log of {key} reached Dagster"


def assert_no_secret_stored(setup: Setup, stack: DagsterStack) -> None:
    """The Snowflake password is in no row Dagster stored (event logs, runs, tags, metadata…), in no file
    under its home (compute logs) and in no log of the stack."""
    secret = os.environ[SNOWFLAKE_PASSWORD_ENV]
    with psycopg.connect(**setup.dagster_db) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'dagster'")]
        assert "event_logs" in tables
        for table in tables:
            query = sql.SQL("SELECT count(*) FROM {} x WHERE strpos(x::text, {}) > 0").format(
                sql.Identifier("dagster", table), sql.Literal(secret)
            )
            assert conn.execute(query).fetchone() == (0,), f"the Snowflake password is in Dagster's table {table}"
    for path in [*(setup.work / "home").rglob("*"), *setup.work.glob("*.log")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the Snowflake password is in {path}"


# ---- Lambda ----------------------------------------------------------------------------------------


def lambda_worker_env(config: Path) -> dict[str, str]:
    """The function's environment, as a deployer sets it: the config file and the secret it names."""
    return {CONFIG_ENV: str(config), SNOWFLAKE_PASSWORD_ENV: os.environ[SNOWFLAKE_PASSWORD_ENV]}


def invoked_chunk(invocation: Any) -> tuple[str, int]:
    task = invocation.event["task"]
    return task["table_key"], task["chunk_index"]


def test_lambda_backfill_with_a_chunk_killed_at_its_timeout(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, process_mark: str
):
    config = setup.config(**lambda_compute(LAMBDA_TIMEOUT, LAMBDA_MARGIN))
    with (
        serve_lambda(monkeypatch, lambda_worker_env(config), LAMBDA_TIMEOUT) as server,
        dagster_stack(setup, config, monkeypatch) as (stack, instance),
    ):
        run_id = plan(build_definitions(config), instance, SOURCE)
        # Chunk 1's first attempt stalls inside its COPY past the function's timeout; the backend's sleep
        # ends soon after the kill, so the chunk's row is free again for the next attempt.
        planned = Planned(config, load(config).source(SOURCE), run_id, "copy.events", setup.target)
        slow_chunk(planned, STALLED, LAMBDA_TIMEOUT + 3, first_attempt_only=True)
        keys = {table: partition_keys(instance, table) for table in TABLES}
        assert [len(k) for k in keys.values()] == [3, 1]

        explain = explainer(
            setup, instance, lambda: [f"{invoked_chunk(i)} {i.status}" for i in list(server.invocations)]
        )
        stack.launch_backfill(list(PATHS.values()), "copy analytics on Lambda")
        stack.start_daemon()
        stack.wait(
            f"chunk copy.events#{STALLED} to be killed at the function's timeout",
            lambda: any(i.status == "timeout" for i in server.invocations),
            BASE + PER_CHUNK * CHUNKS + LAMBDA_TIMEOUT,
            explain=explain,
        )
        marked = processes_with_env(PROCESS_MARK, process_mark)
        assert set(stack.alive()) <= set(marked), "the leftover check at the end sees every process of the stack"
        stack.wait(
            "every chunk partition and its check to be green in the UI (the sensor resumed the killed chunk)",
            lambda: all_green(stack, instance, setup),
            BASE + PER_CHUNK * CHUNKS,
            explain=explain,
        )
        # Only the killed chunk's run failed, retryably; the sensor requested exactly that chunk, once.
        failures = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert len(failures) == 1, f"only the run of the killed chunk should fail:\n{explain()}"
        failed = failures[0]
        assert failed.asset_selection == {dg.AssetKey(PATHS["copy.events"])}
        [failure] = [e for e in instance.all_logs(failed.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
        description = failure.dagster_event.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
        assert "1 of 3 chunks failed (a retry can succeed)" in description
        assert f"the function timed out (timeout_seconds {LAMBDA_TIMEOUT})" in description
        resumes = instance.get_runs(dg.RunsFilter(tags={RESUME_ATTEMPT: "1"}))
        assert [r.tags.get("dagster/partition") for r in resumes] == [keys["copy.events"][STALLED]], explain()
        assert resumes[0].job_name == "copy_chunks__analytics__copy__events"
        stack.wait_run(resumes[0].run_id, BASE)
        # Every chunk went to Lambda: once each, the killed one twice (its first attempt timed out).
        statuses = sorted((invoked_chunk(i), i.status) for i in server.invocations)
        expected = sorted(
            [((t, int(k[:5])), "ok") for t in TABLES for k in keys[t]] + [(("copy.events", STALLED), "timeout")]
        )
        assert statuses == expected

        assert_target_equals_source(setup)
        ledger = ledger_chunks(setup)
        assert ledger[("copy.events", STALLED)]["attempts"] == 2
        assert all(c["attempts"] == 1 for k, c in ledger.items() if k != ("copy.events", STALLED))
        assert pg_rows(
            setup.target, "SELECT status FROM migration_status.migration_runs WHERE run_id = %s", (run_id,)
        ) == [("completed",)]
        assert_chunks_reported(setup, instance)
    assert_no_secret_stored(setup, stack)


# ---- ECS -------------------------------------------------------------------------------------------


def test_ecs_backfill_runs_each_chunk_in_a_container(
    setup: Setup, ecs: dict[str, Any], agent: EcsAgent, monkeypatch: pytest.MonkeyPatch
):
    config = setup.config(**ecs_compute(ecs))
    register_worker(config)  # the password reaches the containers from Secrets Manager
    with dagster_stack(setup, config, monkeypatch) as (stack, instance):
        run_id = plan(build_definitions(config), instance, SOURCE)
        keys = {table: partition_keys(instance, table) for table in TABLES}
        assert [len(k) for k in keys.values()] == [3, 1]

        explain = explainer(
            setup,
            instance,
            lambda: [f"{json.loads(r.env[REQUEST_ENV])['task']} exit {r.exit_code}" for r in list(agent.runs.values())],
        )
        backfill = stack.launch_backfill(list(PATHS.values()), "copy analytics on ECS")
        stack.start_daemon()
        stack.wait(
            "every chunk partition and its check to be green in the UI",
            lambda: all_green(stack, instance, setup),
            BASE + PER_CHUNK * CHUNKS,
            explain=explain,
        )
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
        assert len(runs) == len(TABLES), "one run per table"
        for run in runs:
            stack.wait_run(run.run_id, BASE)

        # Each chunk ran once, in a container of its own: our entry point, its request in the environment.
        agent.wait_stopped(BASE)
        ran = sorted(
            (request["task"]["table_key"], request["task"]["chunk_index"], run.command, run.exit_code)
            for run in agent.runs.values()
            for request in [json.loads(run.env[REQUEST_ENV])]
        )
        assert ran == sorted((t, int(k[:5]), WORKER_COMMAND, 0) for t in TABLES for k in keys[t])

        assert_target_equals_source(setup)
        assert all(c["attempts"] == 1 for c in ledger_chunks(setup).values())
        assert pg_rows(
            setup.target, "SELECT status FROM migration_status.migration_runs WHERE run_id = %s", (run_id,)
        ) == [("completed",)]
        assert_chunks_reported(setup, instance)
    assert_no_secret_stored(setup, stack)
