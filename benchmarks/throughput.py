"""Copy throughput beside ceilings measured in the same run (the machine may be shared and busy).

    .venv/bin/pip install -e ".[test,bench]"
    .venv/bin/python -m benchmarks.throughput [--rows 2000000] [--memory] [--parts runs,per-chunk,dlt]

One run builds ``--rows`` rows × 7 columns (NUMBER(18,0), TIMESTAMP_NTZ, NUMBER(18,2), VARCHAR,
BOOLEAN, DATE, VARIANT) in the Snowflake stand-in (one ``CREATE TABLE … AS SELECT … GENERATOR``,
computed inside the stand-in's DuckDB) and measures, each in a process of its own so each has its
own peak RSS:

* read ceiling: the run's chunk ranges read as Arrow by ``snowflake.scan.read_batches``, nothing written;
* raw writes: the same batches into PostgreSQL by ADBC and by our COPY path (``copy_batches`` with the
  encoder ``copy_chunk`` chooses, ``encoder_for``: binary COPY by pgpq, or CSV); serial ceiling =
  rows / (read + the faster write);
* ``cm-datacopy run`` (the real CLI in a child process, wall time): verification off/on, in place and
  publish, 1 and 2 workers, 100,000-row chunks; 2,000- against 100,000-row chunks on a 200,000-row
  slice, whose difference divided by the extra chunks is the fixed cost of one chunk;
* dlt: our reader's Arrow → dlt → PostgreSQL with each of dlt's bulk loaders, and ``sql_table(backend=
  "pyarrow")`` over snowflake-sqlalchemy; a path that cannot run here is reported as such;
* ``--memory``: peak RSS of ``run`` at ``--rows`` and 5× as many rows (streaming means within 20 %).

Prints the machine, the table and ratios against the serial ceiling; saves
``benchmarks/results/throughput-<rows>.json``. Uses the PostgreSQL at ``CM_DATACOPY_TEST_POSTGRES``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.helpers import (
    SNOWFLAKE_PASSWORD_ENV,
    fresh_pg_database,
    new_sf_database,
    sf_execute,
    write_config,
)

RESULTS = Path(__file__).resolve().parent / "results"
SLICE_ROWS = 200_000
BIG_CHUNK = 100_000
SMALL_CHUNK = 2_000

TABLE_SQL = """CREATE TABLE {name} AS SELECT
    seq8()::NUMBER(18,0) AS ID,
    DATEADD(second, seq8(), '2024-01-01 00:00:00'::TIMESTAMP_NTZ) AS CREATED_AT,
    (seq8() / 7)::NUMBER(18,2) AS AMOUNT,
    'event ' || seq8() || ' Zoë 🚀' AS NAME,
    seq8() % 2 = 0 AS FLAG,
    DATEADD(day, seq8() % 3650, '2000-01-01'::DATE) AS DAY,
    PARSE_JSON('{{"n": ' || seq8() || ', "kind": "k' || (seq8() % 10) || '", "tags": [1, 2]}}') AS PAYLOAD
  FROM TABLE(GENERATOR(ROWCOUNT => {rows}))"""


@dataclass
class Row:
    """One line of the table: what ran, how long, on how many rows, the process's peak RSS."""

    name: str
    seconds: float | None
    rows: int
    peak_mib: float | None = None
    note: str = ""
    kind: str = "measured"  # measured | ceiling | derived | unavailable | failed
    run_seconds: float | None = None  # what ``cm-datacopy run`` itself reports (its process start excluded)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows / self.seconds if self.seconds else None


@dataclass
class Child:
    seconds: float  # wall time of the process
    peak_mib: float  # its peak RSS (os.wait4)
    output: str
    returncode: int
    result: dict[str, Any] = field(default_factory=dict)


def run_child(command: list[str], env: dict[str, str] | None = None, timeout: float = 7200) -> Child:
    """Run a process to its end; its wall time and its own peak RSS (``wait4`` of this pid, not all children)."""
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    result: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
    return Child(seconds, usage.ru_maxrss / 1024, text, proc.returncode, result)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "host": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pg_uri(pg: dict[str, Any]) -> str:
    """A URL for ADBC and dlt (dlt insists on a password; trust auth ignores the placeholder)."""
    auth = quote(str(pg.get("user", "postgres"))) + ":" + quote(str(pg.get("password") or "unused"), safe="")
    return f"postgresql://{auth}@{pg.get('host', '127.0.0.1')}:{pg.get('port', 5432)}/{pg['dbname']}"


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "cm-datacopy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cm_datacopy.cli"]


class Bench:
    """One benchmark run: the stand-ins, the configs, the measurements."""

    def __init__(self, args: argparse.Namespace, sf: standin.StandinSnowflake, pg: dict[str, Any], work: Path) -> None:
        self.args = args
        self.sf = sf
        self.pg = pg
        self.work = work
        self.sf_db = new_sf_database(sf, "BENCH")
        self.rows: list[Row] = []
        self.facts: dict[str, Any] = {}
        self.serial_ceiling: float | None = None

    # -- setup ----------------------------------------------------------------------------------
    def build(self, name: str, rows: int) -> float:
        t = time.perf_counter()
        sf_execute(self.sf, self.sf_db, "USE SCHEMA PUBLIC", TABLE_SQL.format(name=name, rows=rows))
        return time.perf_counter() - t

    def config(
        self, source: str, table: str, schema: str, *, mode: str, workers: int, verify: bool, chunk_size: int
    ) -> Path:
        return write_config(
            self.work / f"{source}.yaml",
            self.sf,
            self.sf_db,
            self.pg,
            [
                {
                    "source": table,
                    "target_schema": schema,
                    "target": "events",
                    "chunk_key": "ID",
                    "chunk_size": chunk_size,
                    "mode": mode,
                }
            ],
            source=source,
            verify=verify,
            workers=workers,
        )

    def drop_schema(self, schema: str) -> None:
        with psycopg.connect(**self.pg, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    def count(self, schema: str, table: str = "events") -> int:
        with psycopg.connect(**self.pg) as conn:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            return int(conn.execute(query).fetchone()[0])

    # -- cm-datacopy run ------------------------------------------------------------------------
    def cli_run(
        self,
        label: str,
        *,
        table: str = "EVENTS",
        rows: int,
        mode: str = "in_place",
        workers: int = 1,
        verify: bool = True,
        chunk_size: int = BIG_CHUNK,
        keep: bool = False,
    ) -> tuple[Row, str, int]:
        """``cm-datacopy run`` in a child process; (its row, the run id, the chunks it copied)."""
        source = re.sub(r"\W+", "_", label.lower()).strip("_")[:40]
        schema = f"b_{source}"
        config = self.config(source, table, schema, mode=mode, workers=workers, verify=verify, chunk_size=chunk_size)
        env = {**os.environ, "COLUMNS": "200"}
        progress(f"cm-datacopy run: {label}")
        child = run_child([*cli_command(), "--config", str(config), "run", source], env=env)
        if child.returncode != 0:
            raise RuntimeError(f"cm-datacopy run ({label}) exited {child.returncode}:\n{child.output[-3000:]}")
        copied = self.count(schema)
        if copied != rows:
            raise RuntimeError(f"cm-datacopy run ({label}) left {copied} rows, expected {rows}")
        m = re.search(r"copied (\d+) of (\d+) chunks.* in ([\d.]+) s", child.output)
        chunks = int(m.group(1)) if m else 0
        note = f"{chunks} chunks; the run itself {m.group(3)} s" if m else ""
        with psycopg.connect(**self.pg) as conn:
            run = Ledger().latest_run(conn, source)
        assert run is not None
        if not keep:
            self.drop_schema(schema)
        own = float(m.group(3)) if m else None
        return Row(f"run: {label}", child.seconds, rows, child.peak_mib, note, run_seconds=own), run.run_id, chunks

    # -- ceilings -------------------------------------------------------------------------------
    def step(self, name: str, spec: dict[str, Any]) -> Child:
        progress(f"step {name} {spec.get('loader_file_format', '')}")
        path = self.work / f"spec-{name}.json"
        path.write_text(json.dumps(spec, default=str))
        env = {
            **os.environ,
            "RUNTIME__LOG_LEVEL": "WARNING",
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "DLT_DATA_DIR": str(self.work / "dlt-data"),
        }
        return run_child([sys.executable, "-m", "benchmarks.throughput_steps", name, str(path)], env=env)

    def ceilings(self, source: str, run_id: str, base_schema: str) -> None:
        n = self.args.rows
        batches = self.work / "batches"
        batches.mkdir(exist_ok=True)
        spec = {
            "config": str(self.work / f"{source}.yaml"),
            "source": source,
            "run_id": run_id,
            "pg": self.pg,
            "pg_uri": pg_uri(self.pg),
            "batches_dir": str(batches),
            "target_schema": "b_ceiling",
        }
        read = self.step("read", spec)
        if read.returncode != 0 or read.result.get("rows") != n:
            raise RuntimeError(f"read ceiling failed:\n{read.output[-3000:]}")
        self.rows.append(
            Row(
                "ceiling: read chunk ranges → Arrow (scan.read_batches)",
                read.result["seconds"],
                n,
                read.peak_mib,
                f"{read.result['chunks']} chunks, nothing written",
                "ceiling",
            )
        )
        with psycopg.connect(**self.pg, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA b_ceiling")
            like = sql.Identifier(base_schema, "events")
            conn.execute(sql.SQL("CREATE TABLE b_ceiling.copy_target (LIKE {})").format(like))
            conn.execute(sql.SQL("CREATE TABLE b_ceiling.adbc_target (LIKE {})").format(like))
            # ADBC's binary COPY sends json as text, which a jsonb column does not take
            for (column,) in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'b_ceiling' "
                "AND table_name = 'adbc_target' AND data_type = 'jsonb'"
            ).fetchall():
                conn.execute(
                    sql.SQL("ALTER TABLE b_ceiling.adbc_target ALTER COLUMN {} TYPE json").format(
                        sql.Identifier(column)
                    )
                )
        writes: list[float] = []
        copy = self.step("copy", {**spec, "target_table": "copy_target"})
        if copy.returncode == 0 and copy.result.get("rows") == n:
            writes.append(copy.result["seconds"])
            self.rows.append(
                Row(
                    f"ceiling: write, our COPY ({copy.result['encoder']})",
                    copy.result["seconds"],
                    n,
                    copy.peak_mib,
                    "copy_batches with encoder_for (as copy_chunk), a transaction per chunk",
                    "ceiling",
                )
            )
        else:
            self.rows.append(Row("ceiling: write, our COPY", None, n, None, _why(copy), "unavailable"))
        adbc = self.step("adbc", {**spec, "target_table": "adbc_target"})
        if adbc.returncode == 0 and adbc.result.get("rows") == n:
            writes.append(adbc.result["seconds"])
            self.rows.append(
                Row(
                    "ceiling: write, ADBC (adbc_ingest, binary COPY)",
                    adbc.result["seconds"],
                    n,
                    adbc.peak_mib,
                    "json column; a transaction per chunk",
                    "ceiling",
                )
            )
        else:
            self.rows.append(Row("ceiling: write, ADBC", None, n, None, _why(adbc), "unavailable"))
        self.drop_schema("b_ceiling")
        shutil.rmtree(batches, ignore_errors=True)
        if not writes:
            raise RuntimeError("no raw write could run; there is no serial ceiling")
        serial = read.result["seconds"] + min(writes)
        self.serial_ceiling = n / serial
        self.rows.append(Row("SERIAL CEILING = rows / (read + best write)", serial, n, None, "", "derived"))

    # -- dlt ------------------------------------------------------------------------------------
    def dlt(self, source: str, run_id: str) -> None:
        n = self.args.rows
        base = {
            "config": str(self.work / f"{source}.yaml"),
            "source": source,
            "run_id": run_id,
            "pg": self.pg,
            "pg_uri": pg_uri(self.pg),
            "pipelines_dir": str(self.work / "dlt-pipelines"),
            "target_table": "events",
        }
        for fmt in ("csv", "parquet"):
            schema = f"b_dlt_arrow_{fmt}"
            child = self.step(
                "dlt-arrow", {**base, "pipeline": f"arrow_{fmt}", "target_schema": schema, "loader_file_format": fmt}
            )
            label = f"dlt: our reader's Arrow → dlt → postgres ({fmt} loader)"
            if child.returncode == 0 and child.result.get("rows") == n:
                self.rows.append(
                    Row(label, child.seconds, n, child.peak_mib, f"pipeline.run {child.result['seconds']:.1f} s")
                )
            else:
                self.rows.append(Row(label, None, n, None, _why(child), "unavailable"))
            self.drop_schema(schema)
        child = self.step(
            "dlt-sql-table",
            {
                **base,
                "pipeline": "sql_table",
                "snowflake": {
                    "user": self.sf.user,
                    "password": self.sf.password,
                    "account": self.sf.account,
                    "database": self.sf_db,
                    "host": self.sf.host,
                    "port": self.sf.port,
                    "protocol": self.sf.protocol,
                },
                "source_table": "EVENTS",
                "chunk_size": BIG_CHUNK,
                "target_schema": "b_dlt_sql_table",
                "loader_file_format": "csv",
            },
        )
        label = 'dlt: sql_table(backend="pyarrow") over snowflake-sqlalchemy (csv loader)'
        if child.returncode == 0 and child.result.get("rows") == n:
            self.rows.append(
                Row(label, child.seconds, n, child.peak_mib, f"pipeline.run {child.result['seconds']:.1f} s")
            )
        else:
            self.rows.append(Row(label, None, n, None, _why(child), "unavailable"))
        self.drop_schema("b_dlt_sql_table")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def progress(text: str) -> None:
    """What runs now (stderr), so a long benchmark shows where it is."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _why(child: Child) -> str:
    """The last line that says what went wrong, for a path that could not run."""
    lines = [line.strip() for line in child.output.splitlines() if line.strip() and not line.startswith("RESULT")]
    errors = [line for line in lines if re.search(r"(Error|Exception|error:)", line)]
    text = (errors or lines or [f"exit {child.returncode}"])[-1]
    return f"could not run here: {text[:160]}"


def print_table(bench: Bench, info: dict[str, Any]) -> None:
    args = bench.args
    print()
    print(
        f"machine: {info['machine']['nproc']} CPUs ({info['machine']['cpu']}), {info['machine']['memory']}; "
        f"load average (1/5/15 min) at start {info['load_start']}, at end {info['load_end']}"
    )
    print(
        f"{args.rows:,} rows × 7 columns (NUMBER(18,0), TIMESTAMP_NTZ, NUMBER(18,2), VARCHAR, BOOLEAN, DATE, VARIANT); "
        f"fakesnow stand-in → local PostgreSQL; {info['started']}"
    )
    counters = info.get("standin_counters", {})
    cache = os.environ.get(standin.TRANSLATION_CACHE_ENV, "1")
    print(
        f"table built in the stand-in in {info['build_seconds']:.1f} s; stand-in query translation cache "
        f"{'off' if cache.strip().lower() in ('0', 'false', 'no', 'off') else 'on'} "
        f"({counters.get('translations_reused', 0):,} queries reused a translation, "
        f"{counters.get('translations', 0):,} translated); commit {info['commit']}"
    )
    ceiling = bench.serial_ceiling
    header = f"{'step':70} {'seconds':>8} {'rows/s':>10} {'×ceiling':>8} {'peak RSS':>9}  note"
    print(header)
    print("-" * len(header))
    for row in bench.rows:
        if row.seconds is None:
            print(f"{row.name:70} {'—':>8} {'—':>10} {'—':>8} {'—':>9}  {row.note}")
            continue
        rate = row.rows_per_second or 0
        ratio = f"{rate / ceiling:.2f}" if ceiling else ""
        rss = f"{row.peak_mib:.0f} MiB" if row.peak_mib else ""
        print(f"{row.name:70} {row.seconds:8.2f} {rate:10,.0f} {ratio:>8} {rss:>9}  {row.note}")
    for key, value in bench.facts.items():
        print(f"{key}: {value}")
    print("seconds: ceilings time the work alone; run and dlt rows are the whole process's wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--memory", action="store_true", help="also run at 5× --rows and compare peak RSS")
    parser.add_argument(
        "--parts",
        default="runs,per-chunk,dlt",
        help="comma-separated, of runs (the mode/workers/verify grid), per-chunk, dlt; the ceilings and one run "
        "always (default: all)",
    )
    args = parser.parse_args()
    info: dict[str, Any] = {
        "machine": machine(),
        "load_start": load_average(),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": args.rows,
        "commit": _commit(),
    }
    work = Path(tempfile.mkdtemp(prefix="cmdc-bench-"))
    password = secrets.token_urlsafe(12)
    os.environ[SNOWFLAKE_PASSWORD_ENV] = password
    try:
        with standin.running(password, work) as sf, fresh_pg_database("cmdc_bench") as pg:
            bench = Bench(args, sf, pg, work)
            measure(bench, info)
            info["standin_counters"] = sf.stats()["counters"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load_end"] = load_average()
    print_table(bench, info)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"throughput-{args.rows}.json"
    info.update(
        rows_table=[{**asdict(r), "rows_per_second": r.rows_per_second} for r in bench.rows],
        serial_ceiling_rows_per_second=bench.serial_ceiling,
        facts=bench.facts,
    )
    out.write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"saved {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


def measure(bench: Bench, info: dict[str, Any]) -> None:
    n = bench.args.rows
    info["build_seconds"] = bench.build("EVENTS", n)
    base, run_id, _ = bench.cli_run("in place, 1 worker, verify off", rows=n, verify=False, keep=True)
    source = "in_place_1_worker_verify_off"
    bench.ceilings(source, run_id, f"b_{source}")
    bench.drop_schema(f"b_{source}")
    bench.rows.append(base)
    parts = set(filter(None, bench.args.parts.split(",")))
    if "runs" in parts:
        for mode in ("in_place", "publish"):
            for workers in (1, 2):
                for verify in (False, True):
                    if (mode, workers, verify) == ("in_place", 1, False):
                        continue
                    plural = "s" if workers > 1 else ""
                    label = f"{mode.replace('_', ' ')}, {workers} worker{plural}, verify {'on' if verify else 'off'}"
                    try:
                        row, _, _ = bench.cli_run(label, rows=n, mode=mode, workers=workers, verify=verify)
                    except RuntimeError as exc:  # shown in the table; the other rows still count
                        row = Row(f"run: {label}", None, n, None, f"FAILED: {str(exc).splitlines()[0]}", "failed")
                    bench.rows.append(row)
    if "per-chunk" in parts:
        per_chunk(bench)
    if "dlt" in parts:
        bench.dlt(source, run_id)
    if bench.args.memory:
        memory(bench)


def per_chunk(bench: Bench) -> None:
    """The fixed cost of a chunk: the same slice in 2,000- and 100,000-row chunks."""
    slice_rows = min(SLICE_ROWS, bench.args.rows)
    bench.build("EVENTS_SLICE", slice_rows)
    for verify in (True, False):
        on = "on" if verify else "off"
        try:
            pair = _slice_pair(bench, slice_rows, verify)
        except RuntimeError as exc:
            bench.facts[f"fixed cost per chunk, verify {on}"] = f"FAILED: {str(exc).splitlines()[0]}"
            continue
        (big, big_chunks), (small, small_chunks) = pair
        bench.rows += [big, small]
        # the runs' own seconds: the process start (imports, ~1-10 s on a busy machine) is no chunk's cost
        t_small = small.run_seconds if small.run_seconds is not None else small.seconds
        t_big = big.run_seconds if big.run_seconds is not None else big.seconds
        assert t_small is not None and t_big is not None
        extra = small_chunks - big_chunks
        if extra > 0:
            cost = (t_small - t_big) / extra
            bench.facts[f"fixed cost per chunk, verify {on}"] = (
                f"{cost * 1000:.0f} ms = ({t_small:.2f} s − {t_big:.2f} s) / {extra} extra chunks "
                "(the runs' own seconds)"
            )


def _slice_pair(bench: Bench, slice_rows: int, verify: bool) -> tuple[tuple[Row, int], tuple[Row, int]]:
    """The slice copied in 100,000-row chunks, then in 2,000-row chunks: (row, chunks copied) of each."""
    on = "on" if verify else "off"
    big, _, big_chunks = bench.cli_run(
        f"slice {slice_rows // 1000}k rows, 100k chunks, verify {on}",
        table="EVENTS_SLICE",
        rows=slice_rows,
        verify=verify,
    )
    small, _, small_chunks = bench.cli_run(
        f"slice {slice_rows // 1000}k rows, 2k chunks, verify {on}",
        table="EVENTS_SLICE",
        rows=slice_rows,
        verify=verify,
        chunk_size=SMALL_CHUNK,
    )
    return (big, big_chunks), (small, small_chunks)


def memory(bench: Bench) -> None:
    """Peak RSS of ``run`` at N and 5N rows: chunks stream, so the peak must not grow with the table."""
    n = bench.args.rows
    bench.build("EVENTS_5X", 5 * n)
    small, _, _ = bench.cli_run(f"memory: {n:,} rows, verify on", rows=n)
    big, _, _ = bench.cli_run(f"memory: {5 * n:,} rows, verify on", table="EVENTS_5X", rows=5 * n)
    bench.rows += [small, big]
    assert small.peak_mib and big.peak_mib
    growth = big.peak_mib / small.peak_mib - 1
    verdict = "within 20 %" if abs(growth) <= 0.20 else "NOT within 20 %"
    bench.facts["memory check"] = (
        f"peak RSS {small.peak_mib:.0f} MiB at {n:,} rows, {big.peak_mib:.0f} MiB at {5 * n:,} rows "
        f"({growth:+.0%}): {verdict}"
    )


if __name__ == "__main__":
    main()
