"""Fault injection: copy a multi-chunk source again and again, break something at a random moment, resume.

Every trial copies the same deterministic Snowflake tables into a fresh PostgreSQL database, through the
real CLI (``cm-datacopy run`` in a subprocess). While the copy runs, one fault is injected:

``sigkill``            the copy process is killed with SIGKILL
``pg_conn_cut``        the TCP proxy between the copy and PostgreSQL resets every connection
``sf_restart``         the Snowflake stand-in is killed and restarted (its in-memory tables are re-created)
``pg_restart``         PostgreSQL itself restarts (fast or immediate: crash recovery), private server only
``pg_trigger_error``   a trigger that raises is added to a target table for a moment
``pg_check_violation`` a CHECK constraint most rows violate is added to a target table for a moment
``pg_lock_held``       another session holds an ACCESS EXCLUSIVE lock on a target for longer than lock_timeout

Then ``cm-datacopy run`` is repeated until it succeeds, and the target is compared with the source
(row count and an order-independent checksum per table, computed by each database), checked for duplicate
keys, and the ledger checked (the run completed, every chunk done, rows_copied = target rows).

PostgreSQL here is a private pgserver (it is restarted), reached through the proxy on loopback TCP.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.faults.pgprivate import PrivatePostgres
from cm_datacopy_tests.faults.proxy import Proxy

KINDS = (
    "sigkill",
    "pg_conn_cut",
    "sf_restart",
    "pg_restart",
    "pg_trigger_error",
    "pg_check_violation",
    "pg_lock_held",
)
PASSWORD_ENV = "CM_DATACOPY_FAULTS_SNOWFLAKE_PASSWORD"
SOURCE = "faults"
SF_DATABASE = "FAULTS"
LOCK_TIMEOUT = 2
MAX_RESUMES = 8


@dataclass(frozen=True)
class SourceTable:
    name: str
    target: str
    chunk_key: str | None
    ddl: str  # one CREATE TABLE ... AS SELECT: the table appears atomically, whole


def source_tables(rows: int) -> list[SourceTable]:
    return [
        SourceTable(
            "EVENTS",
            "events",
            "ID",
            "CREATE OR REPLACE TABLE EVENTS AS SELECT IFF(seq8() % 97 = 5, NULL, seq8())::NUMBER(38,0) AS ID, "
            "(seq8() * 7 % 100000 / 100)::NUMBER(12,2) AS AMOUNT, "
            f"'payload ' || seq8() || ' ' || REPEAT('x', 80) AS BODY FROM TABLE(GENERATOR(ROWCOUNT => {rows}))",
        ),
        SourceTable(
            "SMALL",
            "small",
            None,
            "CREATE OR REPLACE TABLE SMALL AS SELECT seq8()::NUMBER(38,0) AS ID, "
            "(seq8() * 13 % 100000 / 100)::NUMBER(12,2) AS AMOUNT, 'small ' || seq8() AS BODY "
            "FROM TABLE(GENERATOR(ROWCOUNT => 700))",
        ),
    ]


# The same row text on both sides: ID, AMOUNT (NUMBER(12,2) prints alike) and BODY; NULL as 'N'.
_SF_CHECKSUM = (
    "SELECT COUNT(*), SUM(('0x' || SUBSTR(MD5(COALESCE(ID::VARCHAR, 'N') || '|' || COALESCE(AMOUNT::VARCHAR, 'N') "
    "|| '|' || BODY), 1, 15))::NUMBER) FROM {}"
)
_PG_CHECKSUM = (
    "SELECT count(*), coalesce(sum(('x' || substr(md5(coalesce(id::text, 'N') || '|' || coalesce(amount::text, 'N') "
    "|| '|' || body), 1, 15))::bit(60)::bigint), 0), count(DISTINCT body) FROM {}"
)


@dataclass
class TrialResult:
    index: int
    kind: str
    mode: str = ""  # the tables' write mode: publish or in_place
    detail: str = ""
    landed: bool = False  # the fault hit while the first run was still copying
    resumes: int = 0
    retried_chunks: int = 0  # chunks of the final run that needed more than one attempt
    rows_lost: int = 0
    rows_duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Summary:
    results: list[TrialResult] = field(default_factory=list)

    @property
    def faults(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(r.kind for r in self.results).items()))

    @property
    def problems(self) -> list[str]:
        return [f"trial {r.index} ({r.kind}): {p}" for r in self.results for p in r.problems]

    def line(self) -> str:
        faults = ", ".join(f"{k}: {n}" for k, n in self.faults.items())
        return (
            f"trials={len(self.results)} faults={{{faults}}} resumes={sum(r.resumes for r in self.results)} "
            f"rows_lost={sum(r.rows_lost for r in self.results)} "
            f"rows_duplicated={sum(r.rows_duplicated for r in self.results)}"
        )

    def details(self) -> str:
        landed = sum(r.landed for r in self.results)
        modes = ", ".join(f"{k}: {n}" for k, n in sorted(collections.Counter(r.mode for r in self.results).items()))
        return (
            f"faults that landed mid-copy: {landed}/{len(self.results)}; write modes: {{{modes}}}; "
            f"problems: {len(self.problems)}"
        )


class Harness:
    """The stand-ins for a series of trials: a private PostgreSQL behind a proxy, and a Snowflake stand-in."""

    def __init__(
        self,
        workdir: Path,
        *,
        rows: int = 200_000,
        chunk_size: int = 10_000,
        seed: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.workdir = workdir.resolve()
        self.rows = rows
        self.chunk_size = chunk_size
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.log = log
        self.tables = source_tables(rows)
        self.password = secrets.token_urlsafe(12)
        self.env = {**os.environ, PASSWORD_ENV: self.password}
        self._stack = contextlib.ExitStack()

    # ---- the stand-ins -----------------------------------------------------------------------------

    def __enter__(self) -> Harness:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            # Outside pytest's tmp tree: a new pytest session elsewhere resets it to 0700, and the server
            # runs as another system user when we are root.
            pg_dir = Path(tempfile.mkdtemp(prefix="cm_datacopy_faults_pg_"))
            self._stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
            self.pg = PrivatePostgres(pg_dir)
            self._stack.callback(self.pg.stop)
            self.proxy = self._stack.enter_context(Proxy(self.pg.socket_path))
            self.sf_proc, self.sf = standin.start(self.password, self.workdir / "fakesnow")
            self._stack.callback(lambda: standin.stop(self.sf_proc))
            self._seed_snowflake()
            self.source_sums = self._snowflake_checksums()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _sf_connect(self, database: str | None = SF_DATABASE) -> Any:
        import snowflake.connector

        extra: dict[str, Any] = {"paramstyle": "qmark", "login_timeout": 20}
        if database:
            extra["database"] = database
        return snowflake.connector.connect(**self.sf.connect_kwargs(**extra))

    def _seed_snowflake(self) -> None:
        with contextlib.closing(self._sf_connect(None)) as conn:
            cur = conn.cursor()
            cur.execute(f'CREATE DATABASE IF NOT EXISTS "{SF_DATABASE}"')
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{SF_DATABASE}"."PUBLIC"')
            cur.execute(f'USE SCHEMA "{SF_DATABASE}"."PUBLIC"')
            for table in self.tables:
                cur.execute(table.ddl)

    def _snowflake_checksums(self) -> dict[str, tuple[int, int]]:
        with contextlib.closing(self._sf_connect()) as conn:
            cur = conn.cursor()
            sums = {}
            for table in self.tables:
                cur.execute(_SF_CHECKSUM.format(f'"{SF_DATABASE}"."PUBLIC"."{table.name}"'))
                count, total = cur.fetchone()
                sums[table.target] = (int(count), int(total or 0))
            return sums

    def restart_snowflake(self) -> None:
        """Kill the stand-in (its in-memory DuckDB is lost), start it on the same port, re-create the tables."""
        port = self.sf.port
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.sf_proc.pid, signal.SIGKILL)
        self.sf_proc.wait()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sf_proc, self.sf = standin.start(self.password, self.workdir / "fakesnow", port=port)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._seed_snowflake()
        if self._snowflake_checksums() != self.source_sums:
            raise RuntimeError("the re-created source tables differ from the original ones")

    # ---- PostgreSQL helpers (direct, over the Unix socket: never through the proxy) ----------------

    def _pg(self, dbname: str, query: str | sql.Composable, params: Any = None, *, retry: float = 30) -> list[Any]:
        deadline = time.monotonic() + retry
        while True:
            try:
                with psycopg.connect(**self.pg.conninfo(dbname), autocommit=True, connect_timeout=3) as conn:
                    cur = conn.execute(query, params)
                    return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _config(self, dbname: str, workers: int, mode: str) -> Path:
        path = self.workdir / f"{dbname}.yaml"
        body = {
            "snowflake": {
                "account": self.sf.account,
                "user": self.sf.user,
                "password_env": PASSWORD_ENV,
                "database": SF_DATABASE,
                "schema": "PUBLIC",
                "host": self.sf.host,
                "port": self.sf.port,
                "protocol": "http",
                "login_timeout_seconds": 10,
            },
            "postgres": {
                "host": "127.0.0.1",
                "port": self.proxy.port,
                "dbname": dbname,
                "user": "postgres",
                "connect_timeout_seconds": 5,
            },
            "chunk_timeout_seconds": 30,
            "lock_timeout_seconds": LOCK_TIMEOUT,
            "workers": workers,
            "tables": [
                {
                    "source": t.name,
                    "target_schema": "copy",
                    "target": t.target,
                    "mode": mode,
                    **({"chunk_key": t.chunk_key, "chunk_size": self.chunk_size} if t.chunk_key else {}),
                }
                for t in self.tables
            ],
        }
        path.write_text(yaml.safe_dump({"sources": {SOURCE: body}}, sort_keys=False))
        return path

    def _popen(self, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), "run", SOURCE],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    # ---- one trial ---------------------------------------------------------------------------------

    def run_trials(self, trials: int) -> Summary:
        order = list(KINDS)
        self.rng.shuffle(order)
        summary = Summary()
        self.log(f"fault injection: {trials} trials, seed {self.seed}, {self.rows} rows, chunk_size {self.chunk_size}")
        for i in range(trials):
            result = self.trial(i, order[i % len(order)])
            summary.results.append(result)
            status = "ok" if not result.problems else "FAILED: " + "; ".join(result.problems)
            self.log(
                f"trial {i:3d} {result.kind:<19} {result.detail:<40} landed={result.landed!s:<5} "
                f"resumes={result.resumes} retried={result.retried_chunks} {result.seconds:5.1f}s {status}"
            )
        return summary

    def trial(self, index: int, kind: str) -> TrialResult:
        began = time.monotonic()
        result = TrialResult(index, kind)
        dbname = f"faults_{index}_{uuid.uuid4().hex[:6]}"
        self._pg("postgres", sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        workers = self.rng.choice((1, 2))
        mode = result.mode = self.rng.choice(("publish", "in_place"))
        config = self._config(dbname, workers, mode)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        try:
            proc = self._popen(config, logs / f"{dbname}-0.log")
            landed = self._wait_for_moment(dbname, proc, self.rng.random())
            result.detail = f"workers={workers} {mode} " + self._inject(kind, dbname, proc)
            result.landed = landed
            try:
                proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                result.problems.append("the faulted run did not end within 240 s (hang)")
            for attempt in range(1, MAX_RESUMES + 1):
                result.resumes = attempt
                resumed = subprocess.run(
                    [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), "run", SOURCE],
                    stdout=open(logs / f"{dbname}-{attempt}.log", "wb"),  # noqa: SIM115 - closed with the process
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    timeout=240,
                )
                if resumed.returncode == 0:
                    break
                time.sleep(1 if resumed.returncode == 3 else 0.2)
            else:
                result.problems.append(f"not finished after {MAX_RESUMES} resumes; see {logs}/{dbname}-*.log")
            self._verify(dbname, result)
        except Exception as exc:
            result.problems.append(f"harness error: {type(exc).__name__}: {exc}")
        finally:
            result.seconds = time.monotonic() - began
            if not result.problems:
                with contextlib.suppress(Exception):
                    self._pg(
                        "postgres", sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
                    )
        return result

    def _wait_for_moment(self, dbname: str, proc: subprocess.Popen[bytes], fraction: float) -> bool:
        """Wait until a random share of the chunks is done, plus a random part of a chunk; False if the run ended."""
        deadline = time.monotonic() + 120
        target_done, extra = None, self.rng.uniform(0.0, 0.15)
        while proc.poll() is None and time.monotonic() < deadline:
            row = self._pg(
                dbname,
                "SELECT to_regclass('migration_status.migration_chunk_status') IS NOT NULL",
            )
            if row[0][0]:
                done, total = self._pg(
                    dbname,
                    "SELECT count(*) FILTER (WHERE status = 'done'), count(*) "
                    "FROM migration_status.migration_chunk_status",
                )[0]
                if total:
                    target_done = int(fraction * (total - 1)) if target_done is None else target_done
                    if done >= target_done:
                        time.sleep(extra)
                        done = self._pg(
                            dbname,
                            "SELECT count(*) FROM migration_status.migration_chunk_status WHERE status = 'done'",
                        )[0][0]
                        return proc.poll() is None and done < total
            time.sleep(0.03)
        return False

    def _inject(self, kind: str, dbname: str, proc: subprocess.Popen[bytes]) -> str:
        if kind == "sigkill":
            proc.send_signal(signal.SIGKILL)
            return ""
        if kind == "pg_conn_cut":
            return f"cut {self.proxy.cut()} connections"
        if kind == "sf_restart":
            self.restart_snowflake()
            return ""
        if kind == "pg_restart":
            mode = self.rng.choice(("fast", "immediate"))
            self.pg.restart(mode)
            return f"mode={mode}"
        table = sql.Identifier("copy", self.rng.choice(self.tables).target)
        hold = self.rng.uniform(1.0, 3.0)
        if kind == "pg_trigger_error":
            self._pg(
                dbname,
                "CREATE OR REPLACE FUNCTION public.faults_fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN RAISE EXCEPTION 'injected fault: inserts refused'; END$$",
            )
            self._pg(
                dbname,
                sql.SQL(
                    "CREATE TRIGGER faults_fail BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION public.faults_fail()"
                ).format(table),
            )
            time.sleep(hold)
            self._pg(dbname, sql.SQL("DROP TRIGGER faults_fail ON {}").format(table))
        elif kind == "pg_check_violation":
            self._pg(
                dbname,
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT faults_check CHECK (amount < 500) NOT VALID").format(table),
            )
            time.sleep(hold)
            self._pg(dbname, sql.SQL("ALTER TABLE {} DROP CONSTRAINT faults_check").format(table))
        elif kind == "pg_lock_held":
            hold += LOCK_TIMEOUT
            with psycopg.connect(**self.pg.conninfo(dbname)) as conn:
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
                time.sleep(hold)
        else:
            raise ValueError(f"unknown fault kind {kind}")
        return f"{table.as_string()} {hold:.1f}s"

    # ---- verification ------------------------------------------------------------------------------

    def _verify(self, dbname: str, result: TrialResult) -> None:
        target_rows: dict[str, int] = {}
        for table in self.tables:
            ref = sql.Identifier("copy", table.target)
            query = sql.SQL(_PG_CHECKSUM).format(ref)
            count, checksum, distinct = self._pg(dbname, query)[0]
            target_rows[f"copy.{table.target}"] = count
            src_count, src_sum = self.source_sums[table.target]
            result.rows_lost += max(src_count - distinct, 0)
            result.rows_duplicated += count - distinct
            if (count, int(checksum)) != (src_count, src_sum):
                result.problems.append(
                    f"{table.target}: target {count} rows checksum {checksum}, source {src_count} rows "
                    f"checksum {src_sum}"
                )
            dup_keys = self._pg(dbname, sql.SQL("SELECT count(id) - count(DISTINCT id) FROM {}").format(ref))[0][0]
            if dup_keys:
                result.problems.append(f"{table.target}: {dup_keys} duplicated keys")
        runs = self._pg(
            dbname,
            "SELECT run_id, status FROM migration_status.migration_runs ORDER BY started_at DESC LIMIT 1",
        )
        if not runs or runs[0][1] != "completed":
            result.problems.append(f"the latest run is not completed: {runs}")
            return
        run_id = runs[0][0]
        result.retried_chunks = self._pg(
            dbname,
            "SELECT count(*) FILTER (WHERE attempts > 1) FROM migration_status.migration_chunk_status "
            "WHERE run_id = %s",
            (run_id,),
        )[0][0]
        for table_key, open_chunks, rows, table_rows, table_status in self._pg(
            dbname,
            "SELECT c.table_key, count(*) FILTER (WHERE c.status <> 'done'), "
            "coalesce(sum(c.rows_copied) FILTER (WHERE c.status = 'done'), 0), t.rows_copied, t.status "
            "FROM migration_status.migration_chunk_status c JOIN migration_status.migration_table_status t "
            "USING (run_id, table_key) WHERE c.run_id = %s GROUP BY c.table_key, t.rows_copied, t.status",
            (run_id,),
        ):
            expected = target_rows[table_key]
            if open_chunks or table_status != "completed":
                result.problems.append(f"ledger: {table_key} has {open_chunks} chunks not done ({table_status})")
            if rows != expected or table_rows != expected:
                result.problems.append(
                    f"ledger: {table_key} chunks sum to {rows} rows, table row says {table_rows}, target has {expected}"
                )


def run(trials: int, workdir: Path, **kwargs: Any) -> Summary:
    with Harness(workdir, **kwargs) as harness:
        return harness.run_trials(trials)
