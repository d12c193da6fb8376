"""One source copied three ways, side by side: ``cm-datacopy run`` (the engine, the ceiling), a
backfill from Dagster, and Dagster's ``copy_<source>`` job.

    .venv/bin/python -m benchmarks.dagster_vs_cli [--rows 200000] [--chunk-size 8000] [--workers 2]
                                                  [--repeat 2] [--stock-daemon]

Dagster runs as the end-to-end test starts it, as deployed: a real ``dagster-webserver`` and
``dagster-daemon`` already up (with ``--stock-daemon``, the daemon as shipped, whose backfill loop
wakes every 30 s; otherwise every 2 s, as in the tests), storage in PostgreSQL. The job is one
"Launch run" of ``copy_<source>``; the backfill is what a user does in the UI: launch
``plan_<source>``, then "Materialize" → all partitions → "Launch backfill". Each way copies the
same Snowflake table (the stand-in) into a PostgreSQL database of its own; the rounds alternate the
ways, and the best round of each is shown (a shared machine disturbs some rounds).

Figures: end to end (from the command or the first click until the CLI exits, the job's run has
ended, or the UI shows every partition of the backfill materialized) and the copy phase (the first chunk's start to the
last chunk's end, from the ledger), as rows/s, and each Dagster figure as a ratio of the CLI's.
Uses the PostgreSQL at CM_DATACOPY_TEST_POSTGRES (default 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import yaml

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs.instance import prepare_home
from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.dagster.stack import DagsterStack
from cm_datacopy_tests.helpers import (
    SNOWFLAKE_PASSWORD_ENV,
    fresh_pg_database,
    new_sf_database,
    pg_rows,
    sf_execute,
    source_body,
)

POLL = 0.5  # seconds between two looks at whether the copy is done (its resolution)
TABLE = (
    "CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, (seq8() % 1000)::NUMBER(9,0) AS USER_ID, "
    "'event ' || seq8() || ' Zoë 🚀' AS NAME, (seq8() / 7)::NUMBER(18,4) AS AMOUNT, seq8() / 3.0 AS RATIO, "
    "DATEADD(second, seq8(), '2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ) AS CREATED_AT, "
    "seq8() % 2 = 0 AS FLAG FROM TABLE(GENERATOR(ROWCOUNT => {rows}))"
)


def _ledger(pg: dict[str, Any], source: str) -> tuple[int, int, int, float]:
    """(chunks, chunks done, rows done, copy phase in seconds) of the source's latest run."""
    [(chunks, done, rows, seconds)] = pg_rows(
        pg,
        "SELECT count(*), count(*) FILTER (WHERE c.status = 'done'), coalesce(sum(c.rows_copied), 0), "
        "coalesce(extract(epoch FROM max(c.finished_at) - min(c.started_at)), 0) "
        "FROM migration_status.migration_chunk_status c WHERE c.run_id = "
        "(SELECT run_id FROM migration_status.migration_runs WHERE source = %s ORDER BY started_at DESC LIMIT 1)",
        (source,),
    )
    return int(chunks), int(done), int(rows), float(seconds)


class _Watch:
    """Whether every chunk of a source's latest run is done: one connection, one light query a second,
    so watching costs the machine (2 cores, shared by everything measured) next to nothing."""

    def __init__(self, pg: dict[str, Any], source: str) -> None:
        self.conn = psycopg.connect(**pg, autocommit=True)
        self.source = source

    def __call__(self) -> bool:
        try:
            row = self.conn.execute(
                "SELECT count(*) > 0 AND bool_and(c.status = 'done') FROM migration_status.migration_chunk_status c "
                "JOIN migration_status.migration_runs r USING (run_id) WHERE r.source = %s AND r.run_id = "
                "(SELECT max(run_id) FROM migration_status.migration_runs WHERE source = %s)",
                (self.source, self.source),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return False  # no ledger yet: the run is still planning
        return bool(row and row[0])

    def close(self) -> None:
        self.conn.close()


def _timed(what: Callable[[], None]) -> float:
    t = time.perf_counter()
    what()
    return time.perf_counter() - t


WAYS = {
    "cli": "cm-datacopy run",
    "job": "Dagster: copy_<source> job",
    "backfill": "Dagster: plan_<source>, then a backfill",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-size", type=int, default=8_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three ways; the best of each is shown")
    parser.add_argument("--stock-daemon", action="store_true", help="the daemon as shipped (30 s backfill loop)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up on `kill` too
    work = Path(tempfile.mkdtemp(prefix="cmdc-dagster-bench-"))
    os.environ[SNOWFLAKE_PASSWORD_ENV] = secrets.token_urlsafe(12)
    table = {
        "source": "EVENTS",
        "target_schema": "bench",
        "chunk_key": "ID",
        "chunk_size": args.chunk_size,
        "mode": "in_place",
    }
    # One source (and target database) per way and round, all reading the same Snowflake table.
    names = ["warmup", *(f"{way}{r}" for r in range(args.repeat) for way in WAYS)]
    results: dict[str, list[tuple[float, float, int, int]]] = {way: [] for way in WAYS}
    with contextlib.ExitStack() as stack:
        sf = stack.enter_context(standin.running(os.environ[SNOWFLAKE_PASSWORD_ENV], work))
        sf_db = new_sf_database(sf, "BENCH")
        sf_execute(sf, sf_db, "USE SCHEMA PUBLIC", TABLE.format(rows=args.rows))
        targets = {name: stack.enter_context(fresh_pg_database("cmdc_bench")) for name in names}
        dagster_db = stack.enter_context(fresh_pg_database("cmdc_bench_dagster"))
        config = work / "cm_datacopy.yaml"
        sources = {name: source_body(sf, sf_db, pg, [table], workers=args.workers) for name, pg in targets.items()}
        config.write_text(yaml.safe_dump({"sources": sources}, sort_keys=False))

        # Dagster as deployed: the webserver and the daemon are up, the daemon's code server loaded.
        env = {**prepare_home(work / "home", dagster_db), CONFIG_ENV: str(config)}
        dagster = stack.enter_context(DagsterStack(work, env, fast_daemon=not args.stock_daemon))
        dagster.start_webserver(lambda: len(dagster.graphql("{ assetNodes { id } }")["assetNodes"]) == 2 * len(names))
        dagster.start_daemon()
        dagster.wait_run(dagster.launch_job("plan_warmup"), 600)

        for r in range(args.repeat):
            cli = [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), "run", f"cli{r}"]
            measures = {
                "cli": lambda cli=cli: subprocess.run(cli, check=True, capture_output=True),
                "job": partial(_job, dagster, f"job{r}", targets[f"job{r}"]),
                "backfill": partial(_backfill, dagster, f"backfill{r}", targets[f"backfill{r}"]),
            }
            for way, measure in measures.items():
                seconds = _timed(measure)
                chunks, _, rows, phase = _ledger(targets[f"{way}{r}"], f"{way}{r}")
                results[way].append((seconds, phase, rows, chunks))
                print(f"round {r + 1}: {WAYS[way]}: {seconds:.1f} s, copy phase {phase:.1f} s", file=sys.stderr)

    shutil.rmtree(work, ignore_errors=True)
    _report(args, results)


def _job(dagster: DagsterStack, source: str, target: dict[str, Any]) -> None:
    """One "Launch run" of copy_<source>, until the run has ended (it publishes and records the end, as the CLI)."""
    with contextlib.closing(_Watch(target, source)) as chunks_done:
        run_id = dagster.launch_job(f"copy_{source}")
        dagster.wait(f"copy_{source}'s chunks", chunks_done, 1800, every=POLL)
    dagster.wait_run(run_id, 600, every=POLL)


def _backfill(dagster: DagsterStack, source: str, target: dict[str, Any]) -> None:
    """Launch plan_<source>; once it succeeded, a backfill of every partition; until every chunk is done."""
    dagster.wait_run(dagster.launch_job(f"plan_{source}"), 600, every=POLL)
    with contextlib.closing(_Watch(target, source)) as chunks_done:
        dagster.launch_backfill([[source, "bench", "events"]], f"benchmark {source}")
        dagster.wait(f"the backfill of {source}", chunks_done, 1800, every=POLL)

    def all_materialized() -> bool:
        status = dagster.partition_status([source, "bench", "events"])
        assert not status["failedPartitions"], status
        return not status["unmaterializedPartitions"]

    dagster.wait(f"Dagster to show every partition of {source} materialized", all_materialized, 600, every=POLL)


def _report(args: argparse.Namespace, results: dict[str, list[tuple[float, float, int, int]]]) -> None:
    """The best round of each way (the least disturbed by whatever else the machine was doing)."""
    best = {way: (min(r[0] for r in runs), min(r[1] for r in runs)) for way, runs in results.items()}
    _, _, rows, chunks = results["cli"][0]
    assert all(r[2:] == (rows, chunks) for runs in results.values() for r in runs), results
    cli_e2e, cli_phase = best["cli"]
    daemon = "stock daemon (30 s backfill loop)" if args.stock_daemon else "daemon with a 2 s backfill loop"
    print(f"\n{rows:,} rows in {chunks} chunks, workers: {args.workers}, best of {args.repeat} rounds")
    print(f"Dagster: dagster-webserver + {daemon}, storage in PostgreSQL")
    print(f"{'way':42} {'end to end':>12} {'rows/s':>9} {'× CLI':>6}   {'copy phase':>10} {'rows/s':>9} {'× CLI':>6}")
    for way, (e2e, phase) in best.items():
        print(
            f"{WAYS[way]:42} {e2e:10.1f} s {rows / e2e:9,.0f} {cli_e2e / e2e:6.2f}   "
            f"{phase:8.1f} s {rows / phase:9,.0f} {cli_phase / phase:6.2f}"
        )


if __name__ == "__main__":
    main()
