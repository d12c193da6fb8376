"""``cm-datacopy demo``: a whole migration on embedded stand-ins, on a machine with no database.

Starts fakesnow (Snowflake's API) seeded with sample ``analytics`` and ``conflict`` tables and an
embedded PostgreSQL (unless ``CM_DATACOPY_DEMO_POSTGRES`` names one, as a libpq conninfo), writes a
config derived from the starter config (``cm-datacopy init``), runs both sources in parallel, kills
one mid-way with SIGKILL, resumes it, and prints the status and a source-vs-target row count check.

``--keep`` leaves the stand-ins running, detached, and writes ``<workdir>/env``: after
``source .demo/env`` every ``cm-datacopy`` command (and ``psql``) works on the demo's data, until
``cm-datacopy demo --stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cm_datacopy.cli.output import print_status
from cm_datacopy.cli.starter import STARTER
from cm_datacopy.config import CONFIG_ENV, SourceConfig, load_config
from cm_datacopy.errors import ConfigError
from cm_datacopy.postgres.ledger import Ledger
from cm_datacopy.run.status import run_status
from cm_datacopy.snowflake import session as sf_session
from cm_datacopy.snowflake.catalog import table_ref
from cm_datacopy.snowflake.scan import Scan, count_rows
from cm_datacopy.standin import snowflake as standin_snowflake
from cm_datacopy.standin.postgres import embedded_postgres, stop_embedded_postgres
from cm_datacopy.standin.sample import create_sample_tables

PASSWORD_ENV = "CM_DATACOPY_DEMO_SNOWFLAKE_PASSWORD"
POSTGRES_ENV = "CM_DATACOPY_DEMO_POSTGRES"
STATE_FILE = "standins.json"  # what --stop needs: the stand-ins' processes and files
ENV_FILE = "env"  # `source` it to use the kept stand-ins


def demo_config(sf: standin_snowflake.StandinSnowflake, pg: dict[str, Any], out: Path) -> Path:
    """The starter's sources, pointed at the stand-ins (password auth for both)."""
    raw = yaml.safe_load(STARTER)
    raw.setdefault("defaults", {})["postgres"] = {k: v for k, v in pg.items() if v is not None}
    for body in raw["sources"].values():
        body["postgres"] = raw["defaults"]["postgres"]
        snow = body["snowflake"]
        for key in ("private_key_file_env", "private_key_passphrase_env", "warehouse", "role"):
            snow.pop(key, None)
        snow.update(
            account=sf.account, user=sf.user, password_env=PASSWORD_ENV, host=sf.host, port=sf.port, protocol="http"
        )
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cm_datacopy.cli", "--config", str(config), *args]


@dataclass(frozen=True)
class Standins:
    """The demo's running stand-ins and the config pointing at them."""

    snowflake: standin_snowflake.StandinSnowflake
    postgres: dict[str, Any]
    config: Path
    snowflake_pid: int
    embedded_postgres: bool


def start_standins(
    stack: contextlib.ExitStack, work: Path, rows: int, console: Console, *, keep: bool = False
) -> Standins:
    """Start fakesnow seeded with the sample tables and a PostgreSQL (embedded, or
    ``CM_DATACOPY_DEMO_POSTGRES``) with a fresh ``cm_datacopy_demo`` database; write the derived config.
    Shared by ``demo`` and ``ui``; the servers stop when ``stack`` closes, unless ``keep``."""
    t0 = time.monotonic()
    os.environ[PASSWORD_ENV] = secrets.token_urlsafe(16)
    proc, sf = standin_snowflake.start(os.environ[PASSWORD_ENV], work)
    if not keep:
        stack.callback(standin_snowflake.stop, proc)
    console.print(f"[bold]1.[/bold] Snowflake stand-in (fakesnow) on {sf.host}:{sf.port}")
    import snowflake.connector

    with contextlib.closing(snowflake.connector.connect(**sf.connect_kwargs())) as conn:
        counts = create_sample_tables(conn, rows)
    console.print("   sample tables: " + ", ".join(f"{k} ({v:,} rows)" for k, v in counts.items()))

    embedded = not os.environ.get(POSTGRES_ENV)
    if embedded:
        pg_kwargs: dict[str, Any] = stack.enter_context(embedded_postgres(work / "postgres", keep=keep))
        where = f"embedded PostgreSQL at {pg_kwargs['host']}"
    else:
        pg_kwargs = conninfo_to_dict(os.environ[POSTGRES_ENV])
        where = f"{POSTGRES_ENV}"
    _fresh_database(pg_kwargs)
    pg_kwargs["dbname"] = "cm_datacopy_demo"
    console.print(f"[bold]2.[/bold] PostgreSQL: {where}, database cm_datacopy_demo ({time.monotonic() - t0:.1f} s)")

    config = demo_config(sf, pg_kwargs, work / "cm_datacopy.yaml")
    console.print(f"[bold]3.[/bold] config {config} (the starter's sources, pointed at the stand-ins)")
    return Standins(sf, pg_kwargs, config, proc.pid, embedded)


def run_demo(workdir: str, rows: int, console: Console, *, keep: bool = False) -> int:
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    _refuse_if_kept(work)
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        started = start_standins(stack, work, rows, console, keep=keep)
        if keep:
            _write_kept(work, started)
        pg_kwargs, config = started.postgres, started.config
        loaded = load_config(config)
        for name in loaded.sources:
            check = subprocess.run(_cli(config, "check", name), capture_output=True, text=True)
            console.print(f"   check {name}: {(check.stdout or check.stderr).strip()}")
            if check.returncode:
                return check.returncode

        console.print("[bold]4.[/bold] running analytics and conflict in parallel; analytics is killed mid-way")
        procs = {
            name: subprocess.Popen(
                _cli(config, "run", name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for name in ("analytics", "conflict")
        }
        killed_after = _kill_mid_way(procs["analytics"], pg_kwargs, "analytics")
        outputs = {name: proc.communicate()[0] for name, proc in procs.items()}
        if killed_after is None:
            console.print("   analytics finished before it could be interrupted (a very fast machine)")
        else:
            console.print(f"   analytics killed with SIGKILL after {killed_after} chunks were committed")
        console.print("   conflict: " + _last_line(outputs["conflict"]))

        ledger = Ledger()
        with psycopg.connect(**pg_kwargs) as pg:
            print_status("analytics", run_status(pg, ledger, "analytics"))
        console.print("[bold]5.[/bold] cm-datacopy run analytics (resumes the interrupted run)")
        resumed = subprocess.run(_cli(config, "run", "analytics"), capture_output=True, text=True)
        for line in resumed.stdout.strip().splitlines():
            console.print("   " + escape(line))

        console.print("[bold]6.[/bold] status and source-vs-target row counts")
        ok = resumed.returncode == 0
        with psycopg.connect(**pg_kwargs) as pg:
            for name, cfg in loaded.sources.items():
                print_status(name, run_status(pg, ledger, name))
                ok &= _compare_counts(cfg, pg, console)
        console.print(
            f"[{'green' if ok else 'red'}]demo {'succeeded' if ok else 'FAILED'}[/] in {time.monotonic() - t0:.1f} s"
        )
        if keep:
            _print_next_steps(work, console)
        return 0 if ok else 1
    return 1


# ---- a kept demo ---------------------------------------------------------------------------------


def _write_kept(work: Path, started: Standins) -> None:
    """The state --stop reads, and the env file that points the CLI (and psql) at the stand-ins."""
    state = {
        "snowflake_pid": started.snowflake_pid,
        "embedded_postgres": str(work / "postgres") if started.embedded_postgres else None,
        "config": str(started.config),
    }
    (work / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    pg = started.postgres
    lines = [
        "# The stand-ins of `cm-datacopy demo --keep`; stop them with `cm-datacopy demo --stop`.",
        f"export {CONFIG_ENV}={shlex.quote(str(started.config))}",
        f"export {PASSWORD_ENV}={shlex.quote(os.environ[PASSWORD_ENV])}",
        # psql and other libpq clients: the demo's PostgreSQL and database.
        f"export PGHOST={shlex.quote(str(pg.get('host', '')))}",
        f"export PGPORT={shlex.quote(str(pg.get('port', 5432)))}",
        f"export PGUSER={shlex.quote(str(pg.get('user', 'postgres')))}",
        "export PGDATABASE=cm_datacopy_demo",
    ]
    env_file = work / ENV_FILE
    env_file.touch(mode=0o600)
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _print_next_steps(work: Path, console: Console) -> None:
    where = os.path.relpath(work)
    steps = [
        (f"source {os.path.relpath(work / ENV_FILE)}", "the demo's config and the stand-in's password"),
        ("cm-datacopy status", "every source: latest run, progress"),
        ("cm-datacopy status analytics", "per table, and why a table is not done"),
        ("cm-datacopy history analytics", "every run"),
        ("cm-datacopy plan conflict", "type plan and chunk plan"),
        ("cm-datacopy verify analytics", "re-checksum the latest run on both sides"),
        ("cm-datacopy run analytics --no-resume", "a fresh copy: Ctrl-C stops it, run again resumes"),
        ("psql -c 'TABLE migration_status.migration_runs'", "the ledger (if psql is installed)"),
        ("cm-datacopy demo --stop" + ("" if where == ".demo" else f" --workdir {where}"), "stop the stand-ins"),
    ]
    width = max(len(command) for command, _ in steps)
    console.print("\nThe stand-ins keep running. Try any command of the docs on them:", markup=False)
    for command, what in steps:
        console.print(f"  {command:<{width}}  # {what}", markup=False)


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"cm_datacopy.standin.snowflake" in cmdline


def _refuse_if_kept(work: Path) -> None:
    state_file = work / STATE_FILE
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if _alive(int(state["snowflake_pid"])):
        raise ConfigError(
            f"a kept demo is running in {os.path.relpath(work)}: use it (source {os.path.relpath(work / ENV_FILE)}) "
            "or stop it first (cm-datacopy demo --stop)"
        )
    stop_demo(str(work), Console(quiet=True))  # left over from a machine restart: clean up


def stop_demo(workdir: str, console: Console) -> int:
    """Stop the stand-ins of ``demo --keep`` in ``workdir``."""
    work = Path(workdir).resolve()
    state_file = work / STATE_FILE
    if not state_file.exists():
        console.print(f"no kept demo in {os.path.relpath(work)}")
        return 0
    state = json.loads(state_file.read_text(encoding="utf-8"))
    pid = int(state["snowflake_pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    console.print("stopped the Snowflake stand-in")
    if state.get("embedded_postgres") and stop_embedded_postgres(Path(state["embedded_postgres"])):
        console.print("stopped the embedded PostgreSQL")
    state_file.unlink()
    (work / ENV_FILE).unlink(missing_ok=True)
    return 0


# ---- the demo's steps ----------------------------------------------------------------------------


def _fresh_database(pg_kwargs: dict[str, Any]) -> None:
    with psycopg.connect(**pg_kwargs, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS cm_datacopy_demo WITH (FORCE)")
        admin.execute("CREATE DATABASE cm_datacopy_demo")


def _kill_mid_way(proc: subprocess.Popen[str], pg_kwargs: dict[str, Any], source: str) -> int | None:
    """SIGKILL the run once a few of its chunks are committed; returns how many were."""
    ledger = Ledger()
    with psycopg.connect(**pg_kwargs, autocommit=True) as pg:
        while proc.poll() is None:
            if ledger.exists(pg) and (done := ledger.done_chunks(pg, source)) >= 3:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return done
            time.sleep(0.02)
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return escape(lines[-1]) if lines else "(no output)"


def _compare_counts(cfg: SourceConfig, pg: psycopg.Connection[Any], console: Console) -> bool:
    table = Table("source table", "Snowflake rows", "PostgreSQL rows", "match")
    ok = True
    with sf_session.connect(cfg.snowflake) as sf:
        for t in cfg.tables:
            ref = table_ref(cfg.snowflake, t)
            src = count_rows(sf, Scan(ref))
            row = pg.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.target_schema, t.target_name))
            ).fetchone()
            dst = int(row[0]) if row else -1
            ok &= src == dst
            table.add_row(ref, f"{src:,}", f"{dst:,}", "[green]yes[/green]" if src == dst else "[red]NO[/red]")
    console.print(table)
    return ok
