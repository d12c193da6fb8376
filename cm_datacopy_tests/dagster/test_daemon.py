"""``cm-datacopy dagster-daemon``: its backfill loop setting, and storage connections it keeps open.

Dagster's PostgreSQL storage opens a new connection for every statement outside its webserver. The
daemon's loops (the backfill loop every second, the run queue, sensors, heartbeats) then cost the
database a new session, a forked backend, every few statements: about ten a second when idle, thirty
during a backfill (``benchmarks/dagster_vs_cli.py`` on 2 cores: that churn slowed the backfill's copy).
The test measures both daemons the same way, ours first (the first daemon on a new database churns the
most), so it fails if ours churns as Dagster's does: measured, ours 1.0–3.2 sessions a second, Dagster's
3.8–13.6, ours without the change 4.9–11.5.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cm_datacopy.config import CONFIG_ENV
from cm_datacopy.dagster_defs.daemon import LOOP_ENV, loop_seconds
from cm_datacopy.dagster_defs.instance import prepare_home
from cm_datacopy.errors import ConfigError
from cm_datacopy_tests.dagster.helpers import source_config
from cm_datacopy_tests.dagster.stack import DagsterStack
from cm_datacopy_tests.helpers import REPO, fresh_pg_database, new_sf_database, pg_rows

WINDOW = 8.0  # seconds of idle daemon measured: the backfill loop wakes 8 times, the run queue 8 times


def test_the_backfill_loop_interval_comes_from_the_environment():
    assert loop_seconds({}) == 1.0
    assert loop_seconds({LOOP_ENV: " 2.5 "}) == 2.5
    for bad in ("fast", "0", "301", "nan"):
        with pytest.raises(ConfigError, match=LOOP_ENV):
            loop_seconds({LOOP_ENV: bad})


def test_a_bad_loop_interval_stops_the_daemon_with_one_error_naming_the_variable():
    done = subprocess.run(
        [sys.executable, "-m", "cm_datacopy.dagster_defs.daemon", "run", "-w", "workspace.yaml"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", LOOP_ENV: "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    expected = f"error: {LOOP_ENV}='soon': give the backfill loop's interval in seconds, from 0.1 to 300"
    assert done.stderr.strip() == expected


def _sessions(dagster_db: dict[str, Any]) -> int:
    """Sessions ever opened on the Dagster database (this query's own excluded)."""
    [(count,)] = pg_rows(dagster_db, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    return int(count) - 1


def _idle_sessions(work: Path, env: dict[str, str], dagster_db: dict[str, Any], *, ours: bool) -> float:
    """New sessions per second on the Dagster database while the daemon idles with its loops running."""

    def looping() -> bool:
        try:
            beats = pg_rows(dagster_db, "SELECT count(DISTINCT daemon_type) FROM dagster.daemon_heartbeats")
        except psycopg.errors.UndefinedTable:
            return False
        return beats[0][0] >= 4  # scheduler, sensors, backfills, run queue: every loop has started

    with DagsterStack(work, env, fast_daemon=ours) as stack:
        stack.start_daemon()
        stack.wait("the daemon's loops to beat", looping, 300)
        time.sleep(WINDOW)  # past the start-up: the code server loaded, each sensor evaluated once
        before = _sessions(dagster_db)
        time.sleep(WINDOW)  # the measurement window, not a wait for work
        return (_sessions(dagster_db) - before) / WINDOW


@pytest.mark.slow
def test_the_daemon_keeps_its_storage_connections_open(snowflake_server, tmp_path):
    sf_db = new_sf_database(snowflake_server)
    with fresh_pg_database() as target, fresh_pg_database("cmdc_dg") as dagster_db:
        config = source_config(tmp_path / "c.yaml", snowflake_server, sf_db, target)
        env = {**prepare_home(tmp_path / "home", dagster_db), CONFIG_ENV: str(config)}
        ours = _idle_sessions(tmp_path, env, dagster_db, ours=True)
        stock = _idle_sessions(tmp_path, env, dagster_db, ours=False)
    assert stock >= 2, f"Dagster's own daemon opened {stock:.1f} sessions/s: the measurement sees no churn"
    assert ours <= stock / 3, f"cm-datacopy dagster-daemon opened {ours:.1f} sessions/s, dagster-daemon {stock:.1f}"
