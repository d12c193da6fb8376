"""One source copied three ways, side by side: ``cm-datacopy run`` (the engine, the ceiling), a
backfill from Dagster, and Dagster's ``copy_<source>`` job.

    .venv/bin/python -m benchmarks.dagster_vs_cli [--rows 200000] [--chunk-size 8000] [--workers 2]
                                                  [--repeat 2] [--stock-daemon]

Dagster runs as the end-to-end test starts it, as deployed: a real ``dagster-webserver`` and
``cm-datacopy dagster-daemon`` (backfill loop every second) already up (with ``--stock-daemon``,
``dagster-daemon`` as Dagster ships it, whose backfill loop wakes every 30 s), storage in
PostgreSQL. The job is one "Launch run" of ``copy_<source>``; the backfill is what a user does in
the UI: launch ``plan_<source>``, then "Materialize" → all partitions → "Launch backfill". It is
shown twice: the backfill alone (from "Launch backfill": what a user waits for once the chunks are
partitions, after ``cm-datacopy ui`` started or a ``copy_<source>`` stopped) and with the plan run
before it. Each way copies the same Snowflake table (the stand-in) into a PostgreSQL database of its
own; the rounds alternate the ways, and the best round of each is shown (a shared machine disturbs
some rounds).

Figures: end to end (from the command or the first click until the CLI exits, the job's run has
ended, or the UI shows every partition of the backfill materialized) and the copy phase (the first
chunk's start to the last chunk's end, from the ledger), as rows/s, and each Dagster figure as a
ratio of the CLI's; where each backfill spent its time, from Dagster's run records (on stderr); and
what the idle webserver and daemon cost in CPU. Uses the PostgreSQL at CM_DATACOPY_TEST_POSTGRES
(default 127.0.0.1:5432).
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
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import yaml

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs.instance import prepare_home
from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.dagster.stack import DagsterStack, group_members
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


WAYS = {
    "cli": "cm-datacopy run",
    "job": "Dagster: copy_<source> job",
    "backfill": "Dagster: backfill (chunks planned before)",
    "plan+backfill": "Dagster: plan_<source>, then a backfill",
}


def _source(way: str, round: int) -> str:
    """The source (and target database) a way copies in a round: a name a source can have."""
    return f"{way.replace('+', '_')}{round}"


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
    measured = ("cli", "job", "plan+backfill")  # the backfill alone is a part of plan+backfill
    names = ["warmup", *(_source(way, r) for r in range(args.repeat) for way in measured)]
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
        idle = _idle_cpu(dagster, seconds=10)

        for r in range(args.repeat):
            cli = [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), "run", _source("cli", r)]
            measures = {
                "cli": partial(_cli, cli),
                "job": partial(_job, dagster, _source("job", r), targets[_source("job", r)]),
                "plan+backfill": partial(
                    _backfill, dagster, _source("plan+backfill", r), targets[_source("plan+backfill", r)]
                ),
            }
            for way, measure in measures.items():
                started = time.perf_counter()
                parts = measure()
                seconds = time.perf_counter() - started
                chunks, _, rows, phase = _ledger(targets[_source(way, r)], _source(way, r))
                for name, figure in {way: seconds, **parts}.items():
                    results[name].append((figure, phase, rows, chunks))
                    print(f"round {r + 1}: {WAYS[name]}: {figure:.1f} s, copy phase {phase:.1f} s", file=sys.stderr)

    shutil.rmtree(work, ignore_errors=True)
    _report(args, results, idle)


def _cli(argv: list[str]) -> dict[str, float]:
    subprocess.run(argv, check=True, capture_output=True)
    return {}


def _job(dagster: DagsterStack, source: str, target: dict[str, Any]) -> dict[str, float]:
    """One "Launch run" of copy_<source>, until the run has ended (it publishes and records the end, as the CLI)."""
    with contextlib.closing(_Watch(target, source)) as chunks_done:
        run_id = dagster.launch_job(f"copy_{source}")
        dagster.wait(f"copy_{source}'s chunks", chunks_done, 1800, every=POLL)
    dagster.wait_run(run_id, 600, every=POLL)
    return {}


RUN_TIMES = """
query T($filter: RunsFilter!) {
  runsOrError(filter: $filter) { ... on Runs { results { runId creationTime startTime endTime } } }
}"""


def _backfill(dagster: DagsterStack, source: str, target: dict[str, Any]) -> dict[str, float]:
    """Launch plan_<source>; once it succeeded, a backfill of every partition, until the UI shows every
    partition materialized. Returns the backfill's own part (what a user waits for once the chunks are
    partitions: after a `cm-datacopy ui` start-up, or a copy_<source> that stopped), and prints where the
    time went, from Dagster's own run records."""
    clicked = time.time()
    plan = dagster.launch_job(f"plan_{source}")
    dagster.wait_run(plan, 600, every=POLL)
    planned = time.time()
    with contextlib.closing(_Watch(target, source)) as chunks_done:
        backfill = dagster.launch_backfill([[source, "bench", "events"]], f"benchmark {source}")
        dagster.wait(f"the backfill of {source}", chunks_done, 1800, every=POLL)

    def all_materialized() -> bool:
        status = dagster.partition_status([source, "bench", "events"])
        assert not status["failedPartitions"], status
        return not status["unmaterializedPartitions"]

    dagster.wait(f"Dagster to show every partition of {source} materialized", all_materialized, 600, every=POLL)
    done = time.time()
    _print_timeline(dagster, target, plan, backfill, clicked, planned, done)
    return {"backfill": done - planned}


def _print_timeline(
    dagster: DagsterStack, target: dict[str, Any], plan: str, backfill: str, clicked: float, planned: float, done: float
) -> None:
    """Where a plan + backfill spends its time: queue and process start of each run, the copy itself."""

    def runs(**filter: Any) -> list[dict[str, Any]]:
        return dagster.graphql(RUN_TIMES, {"filter": filter})["runsOrError"]["results"]

    [(first, last)] = pg_rows(
        target,
        "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(finished_at)) "
        "FROM migration_status.migration_chunk_status",
    )
    [p] = runs(runIds=[plan])
    print(
        f"  plan run: launch -> run starts {p['startTime'] - clicked:.2f} s, "
        f"runs {p['endTime'] - p['startTime']:.2f} s",
        file=sys.stderr,
    )
    for r in sorted(runs(tags=[{"key": "dagster/backfill", "value": backfill}]), key=lambda r: r["creationTime"]):
        print(
            f"  backfill run: launch -> created {r['creationTime'] - planned:.2f} s -> started "
            f"{r['startTime'] - r['creationTime']:.2f} s -> runs {(r['endTime'] or done) - r['startTime']:.2f} s",
            file=sys.stderr,
        )
    print(
        f"  chunks: first starts {float(first) - planned:.2f} s after the backfill's launch, last ends "
        f"{done - float(last):.2f} s before the UI shows all materialized",
        file=sys.stderr,
    )


def _idle_cpu(dagster: DagsterStack, seconds: float) -> dict[str, float]:
    """CPU seconds per second each of the webserver and the daemon (with their code servers) use while
    nothing runs: what their polling loops cost."""

    def cpu() -> dict[tuple[str, int], int]:
        used = {}
        for name, proc in dagster.procs.items():
            for pid in group_members(proc.pid):
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    used[name, pid] = int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return used

    before = cpu()
    time.sleep(seconds)
    after = cpu()
    share = dict.fromkeys(dagster.procs, 0.0)
    for (name, pid), ticks in after.items():  # processes alive throughout: a run worker may end meanwhile
        if (name, pid) in before:
            share[name] += (ticks - before[name, pid]) / os.sysconf("SC_CLK_TCK") / seconds
    return share


def _report(
    args: argparse.Namespace, results: dict[str, list[tuple[float, float, int, int]]], idle: dict[str, float]
) -> None:
    """The best round of each way (the least disturbed by whatever else the machine was doing)."""
    best = {way: (min(r[0] for r in runs), min(r[1] for r in runs)) for way, runs in results.items()}
    _, _, rows, chunks = results["cli"][0]
    assert all(r[2:] == (rows, chunks) for runs in results.values() for r in runs), results
    cli_e2e, cli_phase = best["cli"]
    daemon = "stock dagster-daemon (30 s backfill loop)" if args.stock_daemon else "cm-datacopy dagster-daemon"
    print(f"\n{rows:,} rows in {chunks} chunks, workers: {args.workers}, best of {args.repeat} rounds")
    print(f"Dagster: dagster-webserver + {daemon}, storage in PostgreSQL")
    print("idle, CPU-s per s: " + ", ".join(f"{name} {share:.3f}" for name, share in idle.items()))
    print(f"{'way':42} {'end to end':>12} {'rows/s':>9} {'× CLI':>6}   {'copy phase':>10} {'rows/s':>9} {'× CLI':>6}")
    for way, (e2e, phase) in best.items():
        print(
            f"{WAYS[way]:42} {e2e:10.1f} s {rows / e2e:9,.0f} {cli_e2e / e2e:6.2f}   "
            f"{phase:8.1f} s {rows / phase:9,.0f} {cli_phase / phase:6.2f}"
        )


if __name__ == "__main__":
    main()
