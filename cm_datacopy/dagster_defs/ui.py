"""``cm-datacopy ui``: the Dagster UI and daemon on the demo's stand-ins, for a machine with no database.

Starts the same stand-ins as ``cm-datacopy demo`` (fakesnow with the sample tables, an embedded
PostgreSQL unless ``CM_DATACOPY_DEMO_POSTGRES`` is set), keeps Dagster's storage in that PostgreSQL
(schema ``dagster``), plans both sources so their chunks are already partitions, then runs
``dagster dev`` (webserver + daemon) until Ctrl-C. ``ui_setup`` is everything before ``dagster dev``;
the test that retakes the documentation's screenshots starts from it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from cm_datacopy.cli.demo import start_standins
from cm_datacopy.config import CONFIG_ENV, load_config
from cm_datacopy.redact import redact


@dataclass(frozen=True)
class UiSetup:
    env: dict[str, str]  # what Dagster's processes need: DAGSTER_HOME, its storage, the config file
    config: Path


@contextlib.contextmanager
def ui_setup(work: Path, rows: int, console: Console) -> Iterator[UiSetup]:
    """Stand-ins, a Dagster home on their PostgreSQL, both sources planned; all stopped on exit."""
    import dagster as dg

    from cm_datacopy.dagster_defs import build_definitions
    from cm_datacopy.dagster_defs.instance import prepare_home

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
        yield UiSetup(env, started.config)


def run_ui(workdir: str, rows: int, host: str, port: int, console: Console) -> int:
    with ui_setup(Path(workdir).resolve(), rows, console) as setup:
        console.print(
            f"[bold]5.[/bold] dagster dev on http://{host}:{port}: open [bold]Jobs → copy_analytics → Launch "
            "run[/bold] to copy a whole source, or [bold]Catalog[/bold] → an asset → [bold]Materialize[/bold] to "
            "backfill its chunks. Ctrl-C stops everything."
        )
        # `timeout`, systemd and docker stop with SIGTERM: stop dagster dev as on Ctrl-C.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "cm_datacopy.definitions", "-h", host, "-p", str(port)],
            env={**os.environ, **setup.env},
            start_new_session=True,
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGINT)
            return 130
        except Exception as exc:  # keep secrets out of whatever reaches the terminal
            console.print(f"[red]error:[/red] {redact(str(exc))}")
            return 1
        finally:
            _end_group(proc)
    return 1


def _end_group(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait for ``dagster dev``, then end what it started (its process group): its children (code
    servers, run workers) exit after it, and a code server can even stay behind for good."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
