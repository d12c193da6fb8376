"""``dagster-daemon`` with its backfill loop every 2 s instead of 30 s, for tests and the benchmark.

Dagster 1.13 fixes that interval (``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS``,
read by the backfill loop when it starts); a test that waits for a backfill would otherwise wait up
to 30 s for a timer. Run as ``python -m cm_datacopy_tests.dagster.fast_daemon run -w workspace.yaml``.
"""

import sys

import dagster._daemon.controller as controller

controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2

from dagster._daemon.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "dagster-daemon"
    main()
