"""Chunks as Dagster partitions: one dynamic partitions definition per table, one key per chunk.

A key reads as the chunk it stands for: ``00003_6000_to_8000@3f2a1b`` is chunk 3, key values from
6000 (inclusive) to 8000 (exclusive), of the migration run whose id ends in ``3f2a1b``;
``00000_min_to_2000@…`` is the first chunk (it holds the NULL keys too), ``…_4000_to_max@…`` the
last, ``00000_all_rows@…`` a table copied as one chunk. The index comes first so keys sort in plan
order; the run's tag comes last so a new plan gets new keys (a resumed run keeps its plan, hence its
keys and the materializations recorded for them). The key range is for reading only: the index and
the tag name the chunk, and the ledger holds its exact bounds.

Keys use only letters, digits and ``_ - : @`` (the characters the UI shows unquoted; no ``...``, no
``/``), and stay within ``MAX_KEY`` characters: a bound too long is cut (the UI cuts long keys in the
middle anyway).

When a new run is planned, the keys of older runs are removed: the table's partitions are exactly
the current plan's chunks.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg

from cm_datacopy.config import SourceConfig, TableConfig
from cm_datacopy.errors import DatacopyError
from cm_datacopy.postgres.ledger import Ledger, RunEntry
from cm_datacopy.ranges import Chunk, decode_bound

MAX_KEY = 60
_KEY = re.compile(r"^(?P<index>\d{5,})_[-A-Za-z0-9_:]*@(?P<tag>[0-9a-f]{6})$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_]+")
_UNSAFE_KEY = re.compile(r"[^-A-Za-z0-9_:]+")


def safe_name(text: str) -> str:
    """A Dagster name (letters, digits, _) from a schema, table or source name."""
    return _UNSAFE_NAME.sub("_", text).strip("_") or "_"


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


def _bound_text(chunk: Chunk, text: str) -> str:
    """A bound as short key text: dates as ``2024-01-31``, timestamps to the second, ``.`` as ``p``."""
    if chunk.key_kind in ("timestamp", "timestamptz"):
        value = decode_bound(chunk.key_kind, text)
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        text = value.date().isoformat() if value.time() == dt.time() else value.strftime("%Y-%m-%dT%H:%M:%S")
    return _UNSAFE_KEY.sub("", text.replace(".", "p").replace("+", ""))


def partition_key(run_id: str, chunk: Chunk) -> str:
    """The readable key of a chunk of a run (see the module's docstring)."""
    tail = f"@{run_tag(run_id)}"
    if chunk.key_column is None:
        middle = "all_rows"
    else:
        lower = "min" if chunk.lower is None else _bound_text(chunk, chunk.lower)
        upper = "max" if chunk.upper is None else _bound_text(chunk, chunk.upper)
        middle = f"{lower}_to_{upper}"
    head = f"{chunk.index:05d}_"
    return head + middle[: MAX_KEY - len(head) - len(tail)] + tail


def parse_key(key: str) -> tuple[str, int]:
    """(run tag, chunk index) of a chunk's partition key."""
    match = _KEY.match(key)
    if match is None:
        raise DatacopyError(
            f"partition {key!r} is not a chunk of a migration run (keys look like 00003_6000_to_8000@3f2a1b); "
            "it was probably added by hand: the next plan of the source removes it"
        )
    return match["tag"], int(match["index"])


def find_run(pg: psycopg.Connection[Any], cfg: SourceConfig, tag: str) -> RunEntry:
    """The source's ledger run whose id ends with ``tag``."""
    run = Ledger(cfg.postgres.ledger_schema).find_run_by_suffix(pg, cfg.name, tag)
    if run is None:
        raise DatacopyError(f"source {cfg.name!r} has no migration run with tag {tag} in its ledger")
    return run


def run_keys(ledger: Ledger, pg: psycopg.Connection[Any], run_id: str) -> dict[tuple[str, int], str]:
    """(table key, chunk index) → partition key, for every chunk of a run, in plan order."""
    return {(c.table_key, c.index): partition_key(run_id, c) for c in ledger.chunks(pg, run_id)}


@dataclass(frozen=True)
class Registration:
    table_key: str
    partitions_def_name: str
    added: int
    removed: int
    total: int


def register_run(
    instance: dg.DagsterInstance, cfg: SourceConfig, keys: dict[tuple[str, int], str]
) -> list[Registration]:
    """Make each table's partitions exactly the run's chunks (``run_keys``); idempotent."""
    done = []
    for table in cfg.tables:
        name = partitions_def_name(cfg.name, table)
        wanted = [key for (table_key, _), key in keys.items() if table_key == table.key]
        existing = instance.get_dynamic_partitions(name)
        keep = set(wanted)
        stale = [k for k in existing if k not in keep]
        for key in stale:
            instance.delete_dynamic_partition(name, key)
        present = set(existing)
        new = [k for k in wanted if k not in present]
        if new:
            instance.add_dynamic_partitions(name, new)
        done.append(Registration(table.key, name, len(new), len(stale), len(wanted)))
    return done
