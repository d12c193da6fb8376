"""End to end: the real dagster-webserver and dagster-daemon, storage in PostgreSQL (schema dagster).

Source ``analytics`` (in place) is planned, then backfilled through the GraphQL mutation the UI's
"Launch backfill" sends; one chunk fails once for real (the test holds a row lock in its range longer
than ``lock_timeout_seconds``) and the auto-resume sensor copies it again. Source ``second`` (publish
mode) is copied by launching its job ``copy_second``, as from the UI's job page. Then: every
partition and check is green as the UI reports them, the target equals the source, and the ledger
agrees with Dagster. Whatever happens, no process of the stack outlives the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs import build_definitions
from cm_datacopy.dagster_defs.instance import prepare_home
from cm_datacopy.dagster_defs.reporting import CHECK_NAME
from cm_datacopy.dagster_defs.tags import RESUME_ATTEMPT
from cm_datacopy_tests.dagster.helpers import EVENTS_ROWS, REGIONS_ROWS, chunk_held, plan, seed_source, source_config
from cm_datacopy_tests.dagster.stack import DagsterStack, processes_with_env
from cm_datacopy_tests.helpers import fresh_pg_database, new_sf_database, pg_rows

pytestmark = pytest.mark.slow

SECOND = {"source": "EVENTS", "target_schema": "copy_second", "chunk_key": "ID", "chunk_size": 2500, "mode": "publish"}
ANALYTICS = [["analytics", "copy", "events"], ["analytics", "copy", "regions"]]
SECOND_EVENTS = ["second", "copy_second", "events"]
# Deadlines grow with the work waited for (chunks), never a fixed sleep; generous for a loaded machine.
PER_CHUNK = 30.0
BASE = 120.0


@dataclass
class Env:
    stack: DagsterStack
    config: Path
    target: dict[str, Any]
    instance: dg.DagsterInstance


@pytest.fixture(scope="module")
def env(snowflake_server, tmp_path_factory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("e2e")
    sf_db = new_sf_database(snowflake_server)
    seed_source(snowflake_server, sf_db)
    with fresh_pg_database() as target, fresh_pg_database("cmdc_dg") as dagster_db:
        second = yaml.safe_load(source_config(work / "s.yaml", snowflake_server, sf_db, target).read_text())
        second_body = {**second["sources"]["analytics"], "tables": [SECOND]}
        config = source_config(
            work / "cm_datacopy.yaml", snowflake_server, sf_db, target, workers=2, extra_sources={"second": second_body}
        )
        home_env = {**prepare_home(work / "home", dagster_db), CONFIG_ENV: str(config)}
        with pytest.MonkeyPatch.context() as mp, DagsterStack(work, home_env) as stack:
            for key, value in home_env.items():
                mp.setenv(key, value)
            stack.start_webserver(lambda: len(stack.graphql("{ assetNodes { id } }")["assetNodes"]) == 6)
            with dg.DagsterInstance.get() as instance:
                yield Env(stack, config, target, instance)
        assert not stack.alive(), "every process of the stack is gone"
        assert not stack.leftovers, f"processes outlived SIGTERM and had to be killed: {stack.leftovers}"


def _ledger_done(target: dict[str, Any], source: str) -> dict[str, set[int]]:
    rows = pg_rows(
        target,
        "SELECT c.table_key, c.chunk_index FROM migration_status.migration_chunk_status c "
        "JOIN migration_status.migration_runs r USING (run_id) WHERE r.source = %s AND c.status = 'done'",
        (source,),
    )
    done: dict[str, set[int]] = {}
    for table, index in rows:
        done.setdefault(table, set()).add(index)
    return done


def _chunk_state(target: dict[str, Any], index: int) -> tuple[str, int] | None:
    rows = pg_rows(
        target,
        "SELECT c.status, c.attempts FROM migration_status.migration_chunk_status c "
        "JOIN migration_status.migration_runs r USING (run_id) WHERE r.source = 'analytics' "
        "AND c.table_key = 'copy.events' AND c.chunk_index = %s",
        (index,),
    )
    return rows[0] if rows else None


def _all_green(env: Env, path: list[str], keys: list[str]) -> bool:
    status = env.stack.partition_status(path)
    checks = status["checks"][CHECK_NAME]
    return sorted(status["materializedPartitions"]) == sorted(keys) and sorted(checks["succeededPartitions"]) == sorted(
        keys
    )


def test_backfill_with_a_chunk_failing_once_is_resumed_by_the_sensor(env: Env):
    defs = build_definitions(env.config)
    run_id = plan(defs, env.instance, "analytics")
    keys = {tuple(p): env.instance.get_dynamic_partitions("__".join(p)) for p in ANALYTICS}
    events_keys = keys[tuple(ANALYTICS[0])]
    assert [len(k) for k in keys.values()] == [3, 1]
    (b1,), (b2,) = pg_rows(
        env.target,
        "SELECT upper_bound::bigint FROM migration_status.migration_chunk_status WHERE run_id = %s "
        "AND table_key = 'copy.events' AND upper_bound IS NOT NULL ORDER BY chunk_index",
        (run_id,),
    )
    chunks = sum(len(k) for k in keys.values())

    with chunk_held(env.target, (b1 + b2) // 2):
        env.stack.launch_backfill(ANALYTICS, "copy analytics")
        env.stack.start_daemon()
        env.stack.wait(
            "chunk copy.events#1 to fail on the held lock",
            lambda: (_chunk_state(env.target, 1) or ("", 0))[0] == "failed",
            BASE + PER_CHUNK * chunks,
        )
    # The lock is released: the sensor requests the chunk again and it copies.
    for path, partition_keys in keys.items():
        env.stack.wait(
            f"every partition of {'/'.join(path)} and its check to be green in the UI",
            lambda path=path, partition_keys=partition_keys: _all_green(env, list(path), partition_keys),
            BASE + PER_CHUNK * chunks,
        )
    env.stack.wait(
        "the publish sensor to record analytics/copy/events_published",
        lambda: env.instance.get_latest_materialization_event(dg.AssetKey(["analytics", "copy", "events_published"])),
        BASE,
    )

    # The sensor resumed exactly the failed chunk, once, in a run of its own.
    [resumed] = env.instance.get_runs(dg.RunsFilter(tags={RESUME_ATTEMPT: "1"}))
    assert resumed.tags["dagster/partition"] == events_keys[1]
    assert resumed.job_name == "copy_chunks__analytics__copy__events"
    env.stack.wait_run(resumed.run_id, BASE)
    [failed] = env.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert (failed.tags["dagster/asset_partition_range_start"], failed.tags["dagster/asset_partition_range_end"]) == (
        events_keys[0],
        events_keys[2],
    ), "the chunks of copy.events in one run: the failed chunk's run-mates stayed materialized"
    assert _chunk_state(env.target, 1) == ("done", 2)

    # Many chunks per run: the backfill made one run per table, not one per chunk.
    backfill_runs = env.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": failed.tags["dagster/backfill"]}))
    assert len(backfill_runs) == len(ANALYTICS)

    # The target equals the source (the planted row gone, nothing lost or doubled); the ledger agrees.
    assert pg_rows(
        env.target,
        "SELECT count(*), count(DISTINCT body), count(*) FILTER (WHERE body LIKE 'planted%%') FROM copy.events",
    ) == [(EVENTS_ROWS, EVENTS_ROWS, 0)]
    assert pg_rows(env.target, "SELECT count(*) FROM copy.regions") == [(REGIONS_ROWS,)]
    assert pg_rows(
        env.target,
        "SELECT status, resume_attempt_count FROM migration_status.migration_runs WHERE run_id = %s",
        (run_id,),
    ) == [("completed", 1)]
    done = _ledger_done(env.target, "analytics")
    for path, partition_keys in keys.items():
        table = f"{path[1]}.{path[2]}"
        assert {partition_keys[i] for i in done[table]} == env.instance.get_materialized_partitions(
            dg.AssetKey(list(path))
        )


def test_copy_source_job_launched_from_the_ui_plans_copies_and_publishes(env: Env):
    run_id = env.stack.launch_job("copy_second")
    env.stack.start_daemon()
    env.stack.wait_run(run_id, BASE + PER_CHUNK * 2)
    keys = env.instance.get_dynamic_partitions("__".join(SECOND_EVENTS))
    assert len(keys) == 2 and _all_green(env, SECOND_EVENTS, keys)
    published = env.instance.get_latest_materialization_event(
        dg.AssetKey(["second", "copy_second", "events_published"])
    )
    assert published.run_id == run_id, "the job published the table itself"
    assert published.asset_materialization.metadata["outcome"].value == "swapped in (publish mode)"
    assert pg_rows(env.target, "SELECT count(*), count(DISTINCT body) FROM copy_second.events") == [
        (EVENTS_ROWS, EVENTS_ROWS)
    ]
    assert pg_rows(env.target, "SELECT status FROM migration_status.migration_runs WHERE source = 'second'") == [
        ("completed",)
    ]
    assert _ledger_done(env.target, "second") == {"copy_second.events": {0, 1}}


def test_a_test_failing_while_a_run_copies_leaves_no_process_behind(snowflake_server, tmp_path):
    """The stack's exit stops every process it started, mid-run and on an exception: none outlives it."""
    sf_db = new_sf_database(snowflake_server)
    seed_source(snowflake_server, sf_db)
    with fresh_pg_database() as target, fresh_pg_database("cmdc_dg") as dagster_db:
        config = source_config(tmp_path / "c.yaml", snowflake_server, sf_db, target)
        env = {**prepare_home(tmp_path / "home", dagster_db), CONFIG_ENV: str(config)}
        with pytest.raises(RuntimeError, match="a failing test"), DagsterStack(tmp_path, env) as stack:
            stack.start_webserver(lambda: len(stack.graphql("{ assetNodes { id } }")["assetNodes"]) == 4)
            stack.start_daemon()
            run_id = stack.launch_job("copy_analytics")
            stack.wait("the run to start", lambda: stack.run_status(run_id) in ("STARTED", "SUCCESS"), BASE)
            started = stack.alive()
            raise RuntimeError("a failing test")
    assert len(started) >= 5, "webserver, daemon, their code servers and the run's process were up"
    assert not stack.alive()
    assert not processes_with_env("DAGSTER_HOME", env["DAGSTER_HOME"])
