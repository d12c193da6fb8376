"""The measured steps of ``benchmarks.throughput``, each run in a process of its own.

A step in its own process has its own peak RSS (the parent reads it with ``os.wait4``) and pays no
memory of the steps before it. Each step prints one JSON line: the seconds it timed itself (the
work alone, without imports or connecting) and what it did.

    python -m benchmarks.throughput_steps STEP SPEC.json

Steps: ``read`` (the chunks from the Snowflake stand-in as Arrow, saved for the writers outside the
timed part), ``copy`` (those batches COPYed into PostgreSQL by the encoder ``copy_chunk`` uses),
``adbc`` (the same batches through ADBC's PostgreSQL driver), ``dlt-arrow`` (our reader's Arrow
tables → a dlt pipeline into PostgreSQL) and ``dlt-sql-table`` (dlt's ``sql_table`` over
snowflake-sqlalchemy, the way a dlt user reads Snowflake).
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from cm_datacopy.config import load_config
from cm_datacopy.postgres import encoder as pg_encoder
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.ranges import Chunk
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.scan import Scan, read_batches


def _plan(spec: dict[str, Any]) -> tuple[Any, Any, list[Chunk]]:
    """(source config, the run's table entry, its chunks) of the run the spec names."""
    cfg = load_config(Path(spec["config"])).source(spec["source"])
    with psycopg.connect(**spec["pg"]) as conn:
        ledger = Ledger(cfg.postgres.ledger_schema)
        entry = ledger.table_entries(conn, spec["run_id"])[0]
        chunks = ledger.chunks(conn, spec["run_id"])
    return cfg, entry, chunks


def _chunk_file(spec: dict[str, Any], index: int) -> Path:
    return Path(spec["batches_dir"]) / f"chunk-{index:05d}.pickle"


def _saved_chunks(spec: dict[str, Any], count: int) -> Iterator[list[pa.RecordBatch]]:
    for i in range(count):
        with _chunk_file(spec, i).open("rb") as f:
            yield pickle.load(f)


def step_read(spec: dict[str, Any]) -> dict[str, Any]:
    """Read every chunk range as the copy does; only the reads are timed (saving them is not)."""
    cfg, entry, chunks = _plan(spec)
    seconds = 0.0
    rows = 0
    with sf_session.connect(cfg.snowflake) as session:
        for i, chunk in enumerate(chunks):
            t = time.perf_counter()
            batches = list(read_batches(session, Scan(entry.source_table, None, chunk), entry.columns))
            seconds += time.perf_counter() - t
            rows += sum(b.num_rows for b in batches)
            if spec.get("save", True):
                with _chunk_file(spec, i).open("wb") as f:
                    pickle.dump(batches, f, protocol=5)
            del batches
    return {"seconds": seconds, "rows": rows, "chunks": len(chunks)}


def step_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """The saved batches COPYed chunk by chunk, one transaction each; loading them from disk is not timed."""
    _, entry, chunks = _plan(spec)
    target = sql.Identifier(spec["target_schema"], spec["target_table"])
    seconds = 0.0
    rows = 0
    name = ""
    with psycopg.connect(**spec["pg"]) as conn:
        for batches in _saved_chunks(spec, len(chunks)):
            t = time.perf_counter()
            with conn.cursor() as cur:
                encoder = pg_encoder.encoder_for(cur, target, entry.columns)  # what copy_chunk chooses
                name = type(encoder).__name__
                n, _ = pg_encoder.copy_batches(cur, target, encoder, batches)
            conn.commit()
            seconds += time.perf_counter() - t
            rows += n
    return {"seconds": seconds, "rows": rows, "encoder": name}


def _unified(batches: list[pa.RecordBatch], names: list[str] | None = None) -> pa.Table:
    """One schema for a chunk's batches (Snowflake sizes integers per result chunk: int16 here, int32 there).

    ``names``: the target's column names (the batches carry Snowflake's).
    """
    first = batches[0].schema
    fields = [pa.field(f.name, pa.int64()) if pa.types.is_integer(f.type) else f for f in first]
    schema = pa.schema(fields)
    table = pa.Table.from_batches([b.cast(schema) for b in batches], schema=schema)
    return table.rename_columns(names) if names else table


def step_adbc(spec: dict[str, Any]) -> dict[str, Any]:
    """The saved batches through ADBC (binary COPY written by the driver in C++), one transaction per chunk."""
    import adbc_driver_postgresql.dbapi as adbc

    _, entry, chunks = _plan(spec)
    names = [c.target_name for c in entry.columns]
    seconds = 0.0
    rows = 0
    with adbc.connect(spec["pg_uri"]) as conn:
        for batches in _saved_chunks(spec, len(chunks)):
            t = time.perf_counter()
            table = _unified(batches, names)
            with conn.cursor() as cur:
                rows += cur.adbc_ingest(
                    spec["target_table"], table, mode="append", db_schema_name=spec["target_schema"]
                )
            conn.commit()
            seconds += time.perf_counter() - t
    return {"seconds": seconds, "rows": rows}


def _dlt_destination(spec: dict[str, Any]) -> Any:
    import dlt

    return dlt.destinations.postgres(credentials=spec["pg_uri"])


def step_dlt_arrow(spec: dict[str, Any]) -> dict[str, Any]:
    """Our reader's Arrow tables, chunk range by chunk range, into a dlt pipeline (extract, normalize, load)."""
    import dlt

    cfg, entry, chunks = _plan(spec)

    @dlt.resource(name=spec["target_table"], write_disposition="append")
    def events() -> Iterator[pa.Table]:
        with sf_session.connect(cfg.snowflake) as session:
            for chunk in chunks:
                batches = list(read_batches(session, Scan(entry.source_table, None, chunk), entry.columns))
                yield _unified(batches, [c.target_name for c in entry.columns])

    pipeline = _dlt_pipeline(spec)
    t = time.perf_counter()
    info = pipeline.run(events(), loader_file_format=spec["loader_file_format"])
    seconds = time.perf_counter() - t
    info.raise_on_failed_jobs()
    return {"seconds": seconds, "rows": _pg_count(spec), "loader_file_format": spec["loader_file_format"]}


def _dlt_pipeline(spec: dict[str, Any]) -> Any:
    """A dlt pipeline into the benchmark's PostgreSQL schema, its state kept in the run's directory."""
    import dlt

    return dlt.pipeline(
        pipeline_name=spec["pipeline"],
        destination=_dlt_destination(spec),
        dataset_name=spec["target_schema"],
        pipelines_dir=spec["pipelines_dir"],
    )


def step_dlt_sql_table(spec: dict[str, Any]) -> dict[str, Any]:
    """dlt's ``sql_table(backend="pyarrow")`` over snowflake-sqlalchemy: the whole table, as a dlt user reads it."""
    import sqlalchemy
    from dlt.sources.sql_database import sql_table

    sf = spec["snowflake"]
    # the stand-in's host, port and protocol go to the connector; SQLAlchemy refuses them in the URL
    engine = sqlalchemy.create_engine(
        sqlalchemy.URL.create(
            "snowflake", username=sf["user"], password=sf["password"], host=sf["account"], database=sf["database"]
        ),
        connect_args={
            "host": sf["host"],
            "port": sf["port"],
            "protocol": sf["protocol"],
            "schema": "PUBLIC",
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        },
    )
    source = sql_table(
        credentials=engine,
        table=spec["source_table"],
        schema="PUBLIC",
        backend="pyarrow",
        chunk_size=spec["chunk_size"],
    )
    pipeline = _dlt_pipeline(spec)
    t = time.perf_counter()
    info = pipeline.run(source, table_name=spec["target_table"], loader_file_format=spec["loader_file_format"])
    seconds = time.perf_counter() - t
    info.raise_on_failed_jobs()
    return {"seconds": seconds, "rows": _pg_count(spec), "loader_file_format": spec["loader_file_format"]}


def _pg_count(spec: dict[str, Any]) -> int:
    with psycopg.connect(**spec["pg"]) as conn:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec["target_schema"], spec["target_table"]))
        return int(conn.execute(query).fetchone()[0])


STEPS = {
    "read": step_read,
    "copy": step_copy,
    "adbc": step_adbc,
    "dlt-arrow": step_dlt_arrow,
    "dlt-sql-table": step_dlt_sql_table,
}


def main() -> None:
    step, spec_path = sys.argv[1], Path(sys.argv[2])
    result = STEPS[step](json.loads(spec_path.read_text()))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
