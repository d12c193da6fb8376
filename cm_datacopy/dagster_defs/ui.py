"""``cm-datacopy ui``: the Dagster UI and daemon on the demo's stand-ins, for a machine with no database.

Starts the same stand-ins as ``cm-datacopy demo`` (fakesnow with the sample tables, an embedded
PostgreSQL unless ``CM_DATACOPY_DEMO_POSTGRES`` is set), keeps Dagster's storage in that PostgreSQL
(schema ``dagster``), plans both sources so their chunks are already partitions, then runs
``dagster dev`` (webserver + daemon) until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from cm_datacopy.cli.demo import start_standins
from cm_datacopy.config import CONFIG_ENV, load_config
from cm_datacopy.redact import redact


def run_ui(workdir: str, rows: int, host: str, port: int, console: Console) -> int:
    import dagster as dg

    from cm_datacopy.dagster_defs import build_definitions
    from cm_datacopy.dagster_defs.instance import prepare_home

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        started = start_standins(stack, work, rows, console)
        env = prepare_home(work / "dagster_home", started.postgres)
        env[CONFIG_ENV] = str(started.config)
        os.environ.update(env)
        console.print(f"[bold]4.[/bold] Dagster home {env['DAGSTER_HOME']} (storage: schema dagster)")
        defs = build_definitions(started.config)
        with dg.DagsterInstance.get() as instance:
            for name in load_config(started.config).sources:
                result = defs.resolve_job_def(f"plan_{name}").execute_in_process(
                    instance=instance, raise_on_error=False
                )
                console.print(f"   plan_{name}: {'ok' if result.success else 'FAILED'}")
        console.print(
            f"[bold]5.[/bold] dagster dev on http://{host}:{port}: open Assets, pick the group [bold]analytics[/bold], "
            "click [bold]Materialize all[/bold] → Launch backfill. Ctrl-C stops everything."
        )
        # `timeout`, systemd and docker stop with SIGTERM: stop dagster dev as on Ctrl-C.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "cm_datacopy.definitions", "-h", host, "-p", str(port)],
            env={**os.environ, **env},
            start_new_session=True,
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                return proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return 130
        except Exception as exc:  # keep secrets out of whatever reaches the terminal
            console.print(f"[red]error:[/red] {redact(str(exc))}")
            return 1
    return 1
