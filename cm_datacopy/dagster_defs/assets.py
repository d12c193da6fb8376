"""One partitioned asset per table (partition = chunk); a run copies many chunks.

Granularity: an asset per table (not per source) so each table shows its own partition bar, its
own checks and its own overview, while the source is the asset group. A backfill of a table makes
runs of up to ``CHUNKS_PER_RUN`` chunks (``BackfillPolicy.multi_run``); each run copies its chunks
through the source's dispatcher with ``workers`` chunks in flight, and records one materialization
and one check evaluation per chunk as it ends. A chunk that fails leaves its run-mates' chunks
materialized; the run fails at the end, and only the chunks not done show as failed.

A chunk is copied only into the migration run that ``cm-datacopy run`` would resume (the one
resume rule, ``cm_datacopy.run.resume.decide``); a chunk already done is not copied again: it
reports the ledger's figures.
"""

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import psycopg

from cm_datacopy.chunk import ChunkTask, Worker, copy_chunk
from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.dagster_defs import partitions, tags
from cm_datacopy.dagster_defs.instance import reuse_storage_connections
from cm_datacopy.dagster_defs.reporting import ChunkFailure, ChunkReporter, check_spec, chunks_failure
from cm_datacopy.dagster_defs.resources import DatacopyConfig
from cm_datacopy.dagster_defs.steps import copy_tasks, load_source, pool_name, source_lock
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger, RunEntry
from cm_datacopy.postgres.lock import SourceLock
from cm_datacopy.run.resume import decide

CHUNKS_PER_RUN = 100


def table_asset(cfg: SourceConfig, table: TableConfig) -> dg.AssetsDefinition:
    source_name = cfg.name
    key = partitions.table_asset_key(source_name, table)
    partitions_def = partitions.partitions_def(source_name, table)
    specs = [check_spec(key, partitions_def)] if cfg.verify else []
    chunking = f"chunks of about {table.chunk_size:,} rows by {table.chunk_key}" if table.chunk_key else "one chunk"

    def _copy(context: dg.AssetExecutionContext, datacopy: DatacopyConfig) -> Iterator[Any]:
        source_cfg = load_source(datacopy, source_name)
        reuse_storage_connections(context.instance)
        yield from copy_partitions(context, source_cfg, table, key, context.partition_keys)
        if specs:
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(specs[0].key))

    # BackfillPolicy is a "beta" parameter of Dagster 1.13: said once here, not on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(
            key=key,
            partitions_def=partitions_def,
            backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=CHUNKS_PER_RUN),
            output_required=False,
            check_specs=specs,
            group_name=source_name,
            pool=pool_name(source_name),
            kinds={"snowflake", "postgres"},
            tags={tags.SOURCE: source_name},
            description=f"Snowflake table {table.source} copied into PostgreSQL {table.key} ({table.mode} mode), "
            f"{chunking}. A partition is a chunk: `00003_6000_to_8000@3f2a1b` is chunk 3, keys from 6000 up to "
            "8000, of the migration run whose id ends in 3f2a1b.",
            metadata={
                "source table": table.source,
                "target table": table.key,
                "chunk key": table.chunk_key or "(none: one chunk)",
                "mode": table.mode,
            },
        )(_copy)


def copy_partitions(
    context: dg.AssetExecutionContext,
    cfg: SourceConfig,
    table: TableConfig,
    asset_key: dg.AssetKey,
    keys: Sequence[str],
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Copy the chunks behind ``keys`` (one table), yielding each chunk's events; fail at the end if any failed."""
    failures: list[ChunkFailure] = []
    by_tag: dict[str, list[tuple[str, int]]] = {}
    for key in keys:
        try:
            tag, index = partitions.parse_key(key)
        except DatacopyError as exc:
            failures.append(ChunkFailure(key, str(exc), retryable=False))
            continue
        by_tag.setdefault(tag, []).append((key, index))
    automatic = tags.resume_attempt(context.run.tags) > 0
    context.log.info(f"{table.key}: {len(keys)} chunks, {cfg.workers} in flight ({cfg.compute.kind})")
    ledger = Ledger(cfg.postgres.ledger_schema)
    with source_lock(cfg) as lock, psycopg.connect(**cfg.postgres.connect_kwargs()) as pg:
        for tag, items in by_tag.items():
            try:
                run = partitions.find_run(pg, cfg, tag)
            except DatacopyError as exc:
                failures += [ChunkFailure(key, str(exc), retryable=False) for key, _ in items]
                continue
            reporter = ChunkReporter(
                instance=context.instance,
                pg=pg,
                ledger=ledger,
                run_id=run.run_id,
                keys={(table.key, i): k for k, i in items},
                chunks={(table.key, c.index): c for c in ledger.chunks(pg, run.run_id, table_key=table.key)},
                asset_keys={table.key: asset_key},
                checked=cfg.verify,
            )
            yield from _copy_run_chunks(context, cfg, table, ledger, pg, run, items, reporter, lock, automatic)
            failures += reporter.failures
            if lock.lost.is_set():
                break
            try:
                ledger.finish_if_complete(pg, run.run_id)  # an in-place source completes with its last chunk
            except (psycopg.Error, DatacopyError) as exc:
                context.log.warning(f"could not record the end of run {run.run_id}: {exc}")
    failure = chunks_failure(failures, len(keys))
    if failure is not None:
        raise failure


def _copy_run_chunks(
    context: dg.AssetExecutionContext,
    cfg: SourceConfig,
    table: TableConfig,
    ledger: Ledger,
    pg: psycopg.Connection[Any],
    run: RunEntry,
    items: list[tuple[str, int]],
    reporter: ChunkReporter,
    lock: SourceLock,
    automatic: bool,
) -> Iterator[Any]:
    """The chunks of one migration run: done ones report the ledger's figures, open ones are copied (if the
    resume rule resumes their run). A replaced run's chunks are refused, done or not: they are not the
    target's rows any more."""
    open_indexes = {c.index for c in ledger.chunks(pg, run.run_id, table_key=table.key, open_only=True)}
    refusal = None  # why open chunks cannot be copied
    if run.status == "superseded":
        refusal = f"migration run {run.run_id} was replaced by {run.superseded_by}"
    elif any(i in open_indexes for _, i in items):
        decision = decide(cfg, ledger.latest_run(pg, cfg.name), no_resume=False, automatic=automatic)
        if decision.run is None or decision.run.run_id != run.run_id:
            refusal = f"migration run {run.run_id} is not resumed ({decision.reason})"
    done, todo = [], []
    for key, index in items:
        task = ChunkTask(cfg.name, run.run_id, table.key, index)
        if (table.key, index) not in reporter.chunks:
            reporter.failures.append(ChunkFailure(key, f"migration run {run.run_id} has no chunk {index}", False))
        elif refusal and (index in open_indexes or run.status == "superseded"):
            reporter.failures.append(
                ChunkFailure(key, f"{refusal}: run the job copy_{cfg.name} (or plan_{cfg.name}) to plan anew", False)
            )
        else:
            (todo if index in open_indexes else done).append(task)
    if done:
        with Worker(cfg) as worker:
            for task in done:
                yield from reporter.events(copy_chunk(cfg, task, worker=worker))
    yield from copy_tasks(context, cfg, todo, reporter, lock)
