"""Chunks as Dagster partitions: one dynamic partitions definition per table, keyed ``<run tag>-<chunk>``.

Why the run tag in the key: a resumed migration run keeps its chunk plan, so it must keep its keys
(and the materializations already recorded for them); a new run has a new plan, and its chunks must
not look materialized because an older run's chunk with the same index was. The tag is the random
tail of the ledger's run id (6 hex digits); the chunk index is zero-padded so insertion order and
reading order agree. Keys never hold ``...`` (the UI's range syntax), ``|`` or ``/``.

When a new run is planned, the keys of older runs are removed: the table's partitions are exactly
the current plan's chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg

from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger, RunEntry

_KEY = re.compile(r"^(?P<tag>[0-9a-f]{6})-(?P<index>\d{5,})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


def safe_name(text: str) -> str:
    """A Dagster name (letters, digits, _) from a schema, table or source name."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def table_asset_key(source: str, table: TableConfig) -> dg.AssetKey:
    return dg.AssetKey([source, safe_name(table.target_schema), safe_name(table.target_name)])


def partitions_def_name(source: str, table: TableConfig) -> str:
    return "__".join(table_asset_key(source, table).path)


def partitions_def(source: str, table: TableConfig) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=partitions_def_name(source, table))


def run_tag(run_id: str) -> str:
    """The short tag of a ledger run id (``analytics-20250101T000000Z-3f2a1b`` → ``3f2a1b``)."""
    tag = run_id.rsplit("-", 1)[-1]
    if not re.fullmatch(r"[0-9a-f]{6}", tag):
        raise DatacopyError(f"run id {run_id!r} does not end with a 6-digit hex tag")
    return tag


def partition_key(run_id: str, chunk_index: int) -> str:
    return f"{run_tag(run_id)}-{chunk_index:05d}"


def parse_key(key: str) -> tuple[str, int]:
    match = _KEY.match(key)
    if match is None:
        raise DatacopyError(f"{key!r} is not a chunk partition key (expected <6 hex>-<00000>)")
    return match["tag"], int(match["index"])


def resolve(pg: psycopg.Connection[Any], cfg: SourceConfig, key: str) -> tuple[RunEntry, int]:
    """The ledger run and chunk index behind a partition key."""
    tag, index = parse_key(key)
    run = Ledger(cfg.postgres.ledger_schema).find_run_by_suffix(pg, cfg.name, tag)
    if run is None:
        raise DatacopyError(f"partition {key}: source {cfg.name!r} has no migration run with tag {tag}")
    return run, index


@dataclass(frozen=True)
class Registration:
    table_key: str
    partitions_def_name: str
    added: int
    removed: int
    total: int


def register_run(
    instance: dg.DagsterInstance, cfg: SourceConfig, pg: psycopg.Connection[Any], run_id: str
) -> list[Registration]:
    """Make each table's partitions exactly the chunks of ``run_id``; idempotent (a resume changes nothing)."""
    by_table: dict[str, list[str]] = {t.key: [] for t in cfg.tables}
    for chunk in Ledger(cfg.postgres.ledger_schema).chunks(pg, run_id):
        by_table.setdefault(chunk.table_key, []).append(partition_key(run_id, chunk.index))
    done = []
    for table in cfg.tables:
        name = partitions_def_name(cfg.name, table)
        wanted = by_table.get(table.key, [])
        existing = instance.get_dynamic_partitions(name)
        stale = [k for k in existing if k not in set(wanted)]
        for key in stale:
            instance.delete_dynamic_partition(name, key)
        present = set(existing)
        new = [k for k in wanted if k not in present]
        if new:
            instance.add_dynamic_partitions(name, new)
        done.append(Registration(table.key, name, len(new), len(stale), len(wanted)))
    return done
