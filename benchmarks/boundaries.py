"""Chunk planning cost: the histogram planner beside a global-sort ROW_NUMBER baseline in the same run.

    .venv/bin/python -m benchmarks.boundaries [--rows 10000000] [--chunk-size 100000]

For each key distribution (dense integers; skewed: 80 % of the rows in 1 % of the key range plus
0.5 % NULL keys) one table is built server-side in the Snowflake stand-in, then planned twice:
``boundaries.plan`` (a few aggregate passes over the key, no sort) and the one-query baseline
``ROW_NUMBER() OVER (ORDER BY key)`` keeping every chunk_size-th key (a sort of the whole table,
which on Snowflake spills once the table is large). Prints figures only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from cm_datacopy.snowflake import boundaries
from cm_datacopy.snowflake.scan import Scan
from cm_datacopy.snowflake.sql import sf_ident
from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, new_sf_database, sf_session

# i = seq8(); a multiplicative hash scatters the keys so that neither table is stored in key order
_HASH = "(seq8() * 2654435761)"
DISTRIBUTIONS = {
    "dense": "seq8()::NUMBER(38,0)",
    "skewed": (
        "(CASE WHEN seq8() % 200 = 0 THEN NULL "
        f"WHEN seq8() % 100 < 80 THEN {_HASH} % 10000000 "
        f"ELSE 10000000 + {_HASH} % 990000000 END)::NUMBER(38,0)"
    ),
}


def _machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    args = parser.parse_args()
    cs = args.chunk_size
    work = Path(tempfile.mkdtemp(prefix="cmdc-bench-"))
    password = secrets.token_urlsafe(12)
    os.environ[SNOWFLAKE_PASSWORD_ENV] = password
    print(f"machine at start: {_machine()}")
    lines = []
    with standin.running(password, work) as sf:
        db = new_sf_database(sf, "BOUNDS")
        session = sf_session(sf, db)
        raw = session.conn
        try:
            for name, key_sql in DISTRIBUTIONS.items():
                ref = ".".join(sf_ident(p) for p in (db, "PUBLIC", name.upper()))
                t = time.perf_counter()
                session.execute(
                    f"CREATE TABLE {ref} AS SELECT {key_sql} AS ID, seq8() AS N "
                    f"FROM TABLE(GENERATOR(ROWCOUNT => {args.rows}))",
                    timeout=3600,
                )
                load = time.perf_counter() - t
                t = time.perf_counter()
                p = boundaries.plan(session, Scan(ref), "ID", "int", cs)
                plan_s = time.perf_counter() - t
                assert p.rows == args.rows and sum(p.chunk_rows) == args.rows, p.rows
                lines.append(
                    (
                        f"{name}: histogram planner",
                        plan_s,
                        p.queries,
                        len(p.chunk_rows),
                        min(p.chunk_rows),
                        max(p.chunk_rows),
                        f"{p.rounds} rounds, {p.null_rows:,} NULL keys, {len(p.oversize)} oversize",
                    )
                )
                t = time.perf_counter()
                keys = session.execute(
                    'SELECT "K" FROM (SELECT "ID" AS "K", ROW_NUMBER() OVER (ORDER BY "ID") AS "RN" '
                    f'FROM {ref}) WHERE "RN" % ? = 0',
                    [cs],
                    timeout=3600,
                ).fetchall()
                sort_s = time.perf_counter() - t
                distinct = len({k for (k,) in keys})
                lines.append(
                    (
                        f"{name}: baseline ROW_NUMBER (global sort)",
                        sort_s,
                        1,
                        distinct + 1,
                        None,
                        None,
                        f"{len(keys)} keys, {len(keys) - distinct} repeated; load {load:.1f} s",
                    )
                )
        finally:
            with contextlib.suppress(Exception):
                raw.close()
    shutil.rmtree(work, ignore_errors=True)

    print(f"{args.rows:,} rows per table, chunk_size {cs:,} (fakesnow stand-in)")
    print(f"{'step':44} {'seconds':>8} {'queries':>7} {'chunks':>6} {'min/cs':>7} {'max/cs':>7}  note")
    for name, seconds, queries, chunks, lo, hi, note in lines:
        lo_s = "—" if lo is None else f"{lo / cs:.3f}"
        hi_s = "—" if hi is None else f"{hi / cs:.3f}"
        print(f"{name:44} {seconds:8.2f} {queries:7} {chunks:6} {lo_s:>7} {hi_s:>7}  {note}")
    print("min/cs, max/cs: smallest and largest planned chunk in rows ÷ chunk_size (the first holds the NULL keys)")
    print(f"machine at end: {_machine()}")


if __name__ == "__main__":
    main()
