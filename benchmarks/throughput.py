"""Copy throughput and verification cost, side by side with ceilings measured in the same run.

    .venv/bin/python -m benchmarks.throughput [--rows 1000000] [--chunk-size 100000]

Ceilings: reading the same chunks from the Snowflake stand-in into Arrow (nothing written), and
COPYing the same Arrow batches into PostgreSQL with the same encoder (nothing read). cm_datacopy
cannot beat the slower of the two; the gap is its own overhead (ledger, transactions, checksums).
Uses the PostgreSQL at CM_DATACOPY_TEST_POSTGRES (default 127.0.0.1:5432) and prints figures only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from cm_datacopy.config import load_config
from cm_datacopy.postgres.encoder import CsvEncoder, copy_batches
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.runner import run_source
from cm_datacopy.run.verify import verify_run
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.scan import Scan, read_batches
from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.helpers import (
    SNOWFLAKE_PASSWORD_ENV,
    fresh_pg_database,
    new_sf_database,
    sf_execute,
    write_config,
)


def _cli_startup() -> float:
    """The fixed cost of one ``cm-datacopy`` process (imports), paid once per command, not per row."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cm_datacopy.cli, snowflake.connector"], check=True)
    return time.perf_counter() - t


def _peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cmdc-bench-"))
    password = secrets.token_urlsafe(12)
    os.environ[SNOWFLAKE_PASSWORD_ENV] = password
    with standin.running(password, work) as sf, fresh_pg_database("cmdc_bench") as pg:
        sf_db = new_sf_database(sf, "BENCH")
        sf_execute(
            sf,
            sf_db,
            "USE SCHEMA PUBLIC",
            f"""CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, (seq8() % 1000)::NUMBER(9,0) AS USER_ID,
                'event ' || seq8() || ' Zoë 🚀' AS NAME, (seq8() / 7)::NUMBER(18,4) AS AMOUNT, seq8() / 3.0 AS RATIO,
                DATEADD(second, seq8(), '2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ) AS CREATED_AT,
                seq8() % 2 = 0 AS FLAG FROM TABLE(GENERATOR(ROWCOUNT => {args.rows}))""",
        )
        results: dict[str, tuple[float, str]] = {}
        for verify in (False, True):
            config = write_config(
                work / f"bench-{verify}.yaml",
                sf,
                sf_db,
                pg,
                [
                    {
                        "source": "EVENTS",
                        "target_schema": f"bench_{str(verify).lower()}",
                        "chunk_key": "ID",
                        "chunk_size": args.chunk_size,
                        "mode": "in_place",
                    }
                ],
                verify=verify,
            )
            cfg = load_config(config).source("analytics")
            t = time.perf_counter()
            outcome = run_source(cfg)
            assert outcome.status == "completed" and outcome.rows == args.rows, outcome
            results[f"copy: run_source (verify={verify})"] = (time.perf_counter() - t, f"peak RSS {_peak_mib()} MiB")
        t = time.perf_counter()
        assert all(table.ok for table in verify_run(cfg, outcome.run_id))
        results["verify: re-checksum a finished run, both sides"] = (time.perf_counter() - t, "")

        with psycopg.connect(**pg) as conn:
            ledger = Ledger()
            run = ledger.latest_run(conn, "analytics")
            assert run is not None
            entry = ledger.table_entries(conn, run.run_id)[0]
            chunks = ledger.chunks(conn, run.run_id)
        batches = []
        t = time.perf_counter()
        with sf_session.connect(cfg.snowflake) as sfc:
            for chunk in chunks:
                batches += list(read_batches(sfc, Scan(entry.source_table, None, chunk), entry.columns))
        results["ceiling: read the chunks from Snowflake (Arrow)"] = (time.perf_counter() - t, "")
        with psycopg.connect(**pg) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE ceiling (LIKE bench_true.events)")
            t = time.perf_counter()
            copy_batches(cur, sql.Identifier("ceiling"), CsvEncoder(entry.columns), batches)
            conn.commit()
            results["ceiling: COPY the same batches into PostgreSQL"] = (time.perf_counter() - t, "")

    print(f"\none cm-datacopy process starts in {_cli_startup():.1f} s (imports; once per command)")
    print(f"{args.rows:,} rows, {len(chunks)} chunks of ~{args.chunk_size:,} (fakesnow stand-in → local PostgreSQL)")
    print(f"{'step':50} {'seconds':>8} {'rows/s':>10} {'s per M rows':>13}")
    for name, (seconds, note) in results.items():
        print(f"{name:50} {seconds:8.2f} {args.rows / seconds:10,.0f} {seconds / args.rows * 1e6:13.2f}  {note}")
    cost = results["copy: run_source (verify=True)"][0] - results["copy: run_source (verify=False)"][0]
    print(f"{'verification inside the load (difference)':50} {cost:8.2f} {'':>10} {cost / args.rows * 1e6:13.2f}")
    with contextlib.suppress(OSError):
        os.rmdir(work)


if __name__ == "__main__":
    main()
