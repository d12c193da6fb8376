"""``cm-datacopy ui``: the Dagster UI and daemon on the demo's stand-ins, for a machine with no database.

Starts the same stand-ins as ``cm-datacopy demo`` (fakesnow with the sample tables, an embedded
PostgreSQL unless ``CM_DATACOPY_DEMO_POSTGRES`` is set), keeps Dagster's storage in that PostgreSQL
(schema ``dagster``), plans both sources so their chunks are already partitions, then runs the
Dagster webserver and ``cm-datacopy dagster-daemon`` (a backfill starts within a second, not 30 s)
until Ctrl-C. ``ui_setup`` is everything before that; the test that retakes the documentation's
screenshots starts from it too.
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
            f"[bold]5.[/bold] Dagster on http://{host}:{port}: open [bold]Jobs → copy_analytics → Launch "
            "run[/bold] to copy a whole source, or [bold]Catalog[/bold] → an asset → [bold]Materialize[/bold] to "
            "backfill its chunks. Ctrl-C stops everything."
        )
        # `timeout`, systemd and docker stop with SIGTERM: stop Dagster as on Ctrl-C.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        env = {**os.environ, **setup.env}
        location = ["-m", "cm_datacopy.definitions"]
        # Each leads a process group of its own (new sessions: Ctrl-C in this terminal does not reach them
        # half-way through a write), which holds what it starts: code servers, run workers.
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv in (
                ["dagster_webserver", *location, "-h", host, "-p", str(port)],
                ["cm_datacopy.dagster_defs.daemon", "run", *location],
            ):
                procs.append(subprocess.Popen([sys.executable, "-m", *argv], env=env, start_new_session=True))
            while all(proc.poll() is None for proc in procs):
                time.sleep(0.5)
            console.print("[red]error:[/red] the Dagster webserver or daemon stopped; see its output above")
            return 1
        except KeyboardInterrupt:
            return 130
        except Exception as exc:  # keep secrets out of whatever reaches the terminal
            console.print(f"[red]error:[/red] {redact(str(exc))}")
            return 1
        finally:
            _end_groups(procs)
    return 1


def _end_groups(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """Stop the webserver and the daemon as Ctrl-C in their own terminal would, wait for them, then end
    what they started (their process groups): their children (code servers, run workers) exit after
    them, and a code server can even stay behind for good."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        alive = [proc.pid for proc in procs if _group_alive(proc.pid)]
        if not alive:
            return
        for group in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group_alive(group) for group in alive):
            time.sleep(0.2)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
