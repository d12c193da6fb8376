"""A Dagster step that copies chunks through a dispatcher, the way the table assets do: one run over a
range of chunk partitions, the dispatcher's results turned into one materialization per copied chunk,
and one ``Failure`` naming the chunks that did not copy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from cm_datacopy.chunk import ChunkResult
from cm_datacopy.dagster_defs.dispatch import ChunkDispatcher
from cm_datacopy_tests.aws.conftest import Planned

ASSET = dg.AssetKey(["analytics", "copy", "events"])
PARTITIONS = "chunks"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@dataclass
class StepOutcome:
    run: dg.ExecuteInProcessResult
    results: dict[int, ChunkResult] = field(default_factory=dict)  # chunk index -> what the dispatcher said
    materialized: dict[str, dict[str, Any]] = field(default_factory=dict)  # partition -> metadata
    failure: str = ""
    log: list[str] = field(default_factory=list)  # the run's log messages (the workers' Pipes logs included)


def key(index: int) -> str:
    return f"{index:05d}"


def run_step(
    planned: Planned, dispatcher: ChunkDispatcher, indexes: list[int] | None = None, in_flight: int = 3
) -> StepOutcome:
    tasks = {t.chunk_index: t for t in planned.tasks()}
    chosen = sorted(tasks) if indexes is None else indexes
    results: dict[int, ChunkResult] = {}

    @dg.multi_asset(
        name="copy_events",
        specs=[dg.AssetSpec(ASSET, skippable=True)],
        partitions_def=dg.DynamicPartitionsDefinition(name=PARTITIONS),
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def copy_events(context):  # (no annotation: dagster checks it against the real class)
        failed = []
        wanted = [tasks[int(k)] for k in context.partition_keys]
        for result in dispatcher.run(context, planned.cfg, wanted, in_flight):
            results[result.task.chunk_index] = result
            if result.ok:
                yield dg.AssetMaterialization(
                    ASSET,
                    partition=key(result.task.chunk_index),
                    metadata={"rows": result.rows, "outcome": result.outcome, "attempt": result.attempt},
                )
            else:
                failed.append(result)
        if failed:
            raise dg.Failure("\n".join(f"{r.task.name}: {r.error} (retryable={r.retryable})" for r in failed))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTITIONS, [key(i) for i in sorted(tasks)])
        keys = [key(i) for i in chosen]
        tags = {RANGE_START: keys[0], RANGE_END: keys[-1]} if len(keys) > 1 else {}
        run = dg.materialize(
            [copy_events],
            instance=instance,
            partition_key=keys[0] if len(keys) == 1 else None,
            tags=tags,
            raise_on_error=False,
        )
        outcome = StepOutcome(run, results)
        for event in run.get_asset_materialization_events():
            m = event.materialization
            outcome.materialized[m.partition or ""] = {k: v.value for k, v in m.metadata.items()}
        for event in run.get_step_failure_events():
            data = event.step_failure_data
            outcome.failure = data.user_failure_data.description if data.user_failure_data else data.error.to_string()
        outcome.log = [record.user_message for record in instance.all_logs(run.run_id)]
    return outcome


def slow_chunk(planned: Planned, index: int, seconds: float, *, first_attempt_only: bool = False) -> None:
    """Make PostgreSQL hold the COPY of one chunk for ``seconds`` (a row trigger on one of its rows).

    ``first_attempt_only``: only while the ledger counts one attempt of the chunk (the claim commits
    before the COPY), so the next attempt copies at full speed with nobody dropping the trigger.
    """
    row = next(r for r in planned.chunk_rows() if r["chunk_index"] == index)
    value = int(row["lower_bound"]) if row["lower_bound"] is not None else int(row["upper_bound"]) - 1
    while value % 101 == 7:  # ids ≡ 7 (mod 101) are NULL in the source
        value += 1
    condition = sql.SQL("true")
    if first_attempt_only:
        condition = sql.SQL(
            "(SELECT attempts FROM {} WHERE run_id = {} AND table_key = {} AND chunk_index = {}) = 1"
        ).format(
            sql.Identifier(planned.cfg.postgres.ledger_schema, "migration_chunk_status"),
            sql.Literal(planned.run_id),
            sql.Literal(planned.table_key),
            sql.Literal(index),
        )
    with psycopg.connect(**planned.pg, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION copy.slow_row() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN IF {} THEN PERFORM pg_sleep({}); END IF; RETURN NEW; END $$"
            ).format(condition, sql.Literal(seconds))
        )
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER slow_row BEFORE INSERT ON copy.events FOR EACH ROW "
                "WHEN (NEW.id = {}) EXECUTE FUNCTION copy.slow_row()"
            ).format(sql.Literal(value))
        )


def fast_again(planned: Planned) -> None:
    with psycopg.connect(**planned.pg, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS slow_row ON copy.events")


def chunk_state(planned: Planned, index: int) -> dict[str, Any]:
    return next(r for r in planned.chunk_rows() if r["chunk_index"] == index)
