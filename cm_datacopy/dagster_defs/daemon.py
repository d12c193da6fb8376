"""``dagster-daemon`` with two changes: a backfill loop that wakes every second instead of every
30 s, and storage that keeps its PostgreSQL connections open.

A backfill launched from the UI does nothing until the daemon's backfill loop next wakes: Dagster
1.13 fixes that wait at 30 s (``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS``, read
by the loop when it starts) and offers no setting for it. A user who clicks "Launch backfill" then
waits up to 30 s for the first chunk, longer than a small table takes to copy. This entry point sets
the interval from ``CM_DATACOPY_BACKFILL_LOOP_SECONDS`` (default 1) and then is ``dagster-daemon``,
arguments and all: ``cm-datacopy dagster-daemon run -w workspace.yaml``. The only loop it changes
is the backfill loop (it also bounds declarative automation's pre-sensor interval, which
cm_datacopy does not use); the run queue has its own setting (``run_queue`` in ``dagster.yaml``).

Outside its webserver, Dagster's PostgreSQL storage opens a new connection for every statement. In
the daemon, whose loops run statements all the time, that is about ten new sessions a second when
idle and thirty while a backfill runs, each a backend the database forks, authenticates and tears
down. On a 2-core machine that churn slowed the copy it was watching (``benchmarks/dagster_vs_cli.py``:
a backfill's first chunk started 3 s later, and its chunks copied a fifth slower than the
``copy_<source>`` job's). This daemon's storage holds its connections open, as the webserver's does
(``cm_datacopy.dagster_defs.instance.reuse_storage_connections``, as the copying steps do).

Both changes reach into Dagster's private modules; if a Dagster release moves either, the command
fails at once saying so, rather than quietly running the stock daemon.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from cm_datacopy.dagster_defs.instance import reuse_storage_connections
from cm_datacopy.errors import ConfigError

LOOP_ENV = "CM_DATACOPY_BACKFILL_LOOP_SECONDS"
DEFAULT_LOOP_SECONDS = 1.0


def loop_seconds(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    raw = environ.get(LOOP_ENV, "").strip()
    if not raw:
        return DEFAULT_LOOP_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0.1 <= seconds <= 300):
        raise ConfigError(f"{LOOP_ENV}={raw!r}: give the backfill loop's interval in seconds, from 0.1 to 300")
    return seconds


def set_backfill_loop(seconds: float) -> None:
    """Point Dagster's backfill loop at ``seconds`` (before the daemon starts its threads)."""
    import dagster._daemon.controller as controller

    if not isinstance(getattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", None), int | float):
        # A Dagster that moved the setting: say so rather than silently keep the 30 s loop.
        raise RuntimeError("this Dagster has no DEFAULT_DAEMON_INTERVAL_SECONDS: run dagster-daemon itself")
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds  # type: ignore[assignment]


def pool_storage_connections() -> None:
    """Have the daemon's storage keep its PostgreSQL connections open, as the webserver's does: the
    instance the daemon's command builds is changed before any loop starts."""
    import dagster._daemon.cli as daemon_cli

    run_command = getattr(daemon_cli, "_daemon_run_command", None)
    if run_command is None:
        raise RuntimeError("this Dagster has no dagster._daemon.cli._daemon_run_command: run dagster-daemon itself")

    def pooled(instance: Any, *args: Any, **kwargs: Any) -> Any:
        reuse_storage_connections(instance)
        return run_command(instance, *args, **kwargs)

    daemon_cli._daemon_run_command = pooled


def main(argv: list[str] | None = None) -> None:
    try:
        seconds = loop_seconds()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    set_backfill_loop(seconds)
    pool_storage_connections()
    from dagster._daemon.cli import cli

    cli.main(args=sys.argv[1:] if argv is None else argv, prog_name="cm-datacopy dagster-daemon", obj={})


if __name__ == "__main__":
    main()
