"""Shared pieces of the Dagster tests: a small two-table source and a real fault for one chunk."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from cm_datacopy.dagster_defs import build_definitions
from cm_datacopy.standin.snowflake import StandinSnowflake
from cm_datacopy_tests.helpers import sf_execute, write_config

EVENTS_ROWS = 5_000
EVENTS_CHUNK = 2_000  # 3 chunks: [.., 2000) with NULL ids, [2000, 4000), [4000, ..)
REGIONS_ROWS = 40


def seed_source(sf: StandinSnowflake, database: str) -> None:
    sf_execute(
        sf,
        database,
        "USE SCHEMA PUBLIC",
        f"""CREATE TABLE EVENTS AS SELECT IFF(seq8() % 101 = 7, NULL, seq8())::NUMBER(38,0) AS ID,
            'payload ' || seq8() AS BODY FROM TABLE(GENERATOR(ROWCOUNT => {EVENTS_ROWS}))""",
        f"""CREATE TABLE REGIONS AS SELECT seq8()::NUMBER(9,0) AS REGION_ID, 'région ' || seq8() AS NAME
            FROM TABLE(GENERATOR(ROWCOUNT => {REGIONS_ROWS}))""",
    )


def source_config(
    path: Path,
    sf: StandinSnowflake,
    database: str,
    pg: dict[str, Any],
    source: str = "analytics",
    mode: str = "in_place",
    **overrides: Any,
) -> Path:
    """EVENTS in 3 chunks and REGIONS as one chunk; a 1 s lock timeout so a held lock fails a chunk fast.

    In place by default: the chunks write the target directly, so tests see each chunk land there.
    """
    overrides.setdefault("lock_timeout_seconds", 1)
    return write_config(
        path,
        sf,
        database,
        pg,
        [
            {"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": EVENTS_CHUNK, "mode": mode},
            {"source": "REGIONS", "target_schema": "copy", "mode": mode},
        ],
        source=source,
        **overrides,
    )


EVENTS_KEY = dg.AssetKey(["analytics", "copy", "events"])
REGIONS_KEY = dg.AssetKey(["analytics", "copy", "regions"])
EVENTS_PARTITIONS = "analytics__copy__events"
REGIONS_PARTITIONS = "analytics__copy__regions"
EVENTS_JOB = "copy_chunks__analytics__copy__events"
REGIONS_JOB = "copy_chunks__analytics__copy__regions"


def plan(defs: dg.Definitions, instance: dg.DagsterInstance, source: str = "analytics", **config: Any) -> str:
    """Run the planning job in process; returns the migration run id."""
    result = defs.resolve_job_def(f"plan_{source}").execute_in_process(
        instance=instance, run_config={"ops": {f"{source}_plan": {"config": config}}} if config else None
    )
    assert result.success
    return result.output_for_node(f"{source}_plan")


def copy_source(
    defs: dg.Definitions, instance: dg.DagsterInstance, source: str = "analytics", tags: Any = None, **config: Any
) -> dg.ExecuteInProcessResult:
    """Run ``copy_<source>`` in process (failures are returned, not raised)."""
    return defs.resolve_job_def(f"copy_{source}").execute_in_process(
        instance=instance,
        run_config={"ops": {f"{source}_copy": {"config": config}}} if config else None,
        tags=tags or {},
        raise_on_error=False,
    )


def copy_range(
    defs: dg.Definitions, instance: dg.DagsterInstance, job: str, keys: list[str], tags: Any = None
) -> dg.ExecuteInProcessResult:
    """One run of a table's chunks job over the partitions ``keys[0]`` … ``keys[-1]``, as a backfill makes."""
    range_tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, tags={**range_tags, **(tags or {})}, raise_on_error=False
    )


def materialized(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    return set(instance.get_materialized_partitions(key))


def failed(instance: dg.DagsterInstance, key: dg.AssetKey, partitions_def_name: str) -> set[str]:
    keys = instance.get_dynamic_partitions(partitions_def_name)
    statuses = instance.get_status_by_partition(key, keys, dg.DynamicPartitionsDefinition(name=partitions_def_name))
    return {k for k, status in (statuses or {}).items() if status == dg.AssetPartitionStatus.FAILED}


def load_defs(path: Path) -> dg.Definitions:
    return build_definitions(path)


@contextlib.contextmanager
def chunk_held(pg: dict[str, Any], key_value: int) -> Iterator[None]:
    """A real fault: a target row in one chunk's range, row-locked by another session.

    The chunk's DELETE waits for that lock and fails after ``lock_timeout_seconds``; other chunks'
    ranges do not hold the row, so they copy as usual. Releasing the lock (leaving the block) lets
    the next attempt through; that attempt deletes the planted row with the rest of the range.
    """
    with psycopg.connect(**pg) as conn:
        conn.execute(
            sql.SQL("INSERT INTO copy.events (id, body) VALUES (%s, 'planted: held by the test')"), (key_value,)
        )
        conn.commit()
        conn.execute("SELECT 1 FROM copy.events WHERE id = %s FOR UPDATE", (key_value,))
        yield
        conn.rollback()


def source_config_path(defs: dg.Definitions) -> str:
    """The config file the definitions were built from (their ``datacopy`` resource's path)."""
    return defs.resources["datacopy"].path
