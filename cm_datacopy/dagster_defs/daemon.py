"""``dagster-daemon`` whose backfill loop wakes every second instead of every 30 s.

A backfill launched from the UI does nothing until the daemon's backfill loop next wakes: Dagster
1.13 fixes that wait at 30 s (``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS``, read
by the loop when it starts) and offers no setting for it. A user who clicks "Launch backfill" then
waits up to 30 s for the first chunk, longer than a small table takes to copy. This entry point sets
the interval from ``CM_DATACOPY_BACKFILL_LOOP_SECONDS`` (default 1) and then is ``dagster-daemon``,
arguments and all: ``cm-datacopy dagster-daemon run -w workspace.yaml``. The only loop it changes
is the backfill loop (it also bounds declarative automation's pre-sensor interval, which
cm_datacopy does not use); the run queue has its own setting (``run_queue`` in ``dagster.yaml``).

An idle backfill loop costs one small query of the run storage per wake-up: measured by
``benchmarks/dagster_vs_cli.py``, the idle daemon with its code server uses 0.02 CPU-s per second,
the same as ``dagster-daemon`` with its 30 s loop.
"""

from __future__ import annotations

import math
import os
import sys

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


def main(argv: list[str] | None = None) -> None:
    try:
        seconds = loop_seconds()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    set_backfill_loop(seconds)
    from dagster._daemon.cli import cli

    cli.main(args=sys.argv[1:] if argv is None else argv, prog_name="cm-datacopy dagster-daemon", obj={})


if __name__ == "__main__":
    main()
