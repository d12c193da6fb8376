"""``cm-datacopy ui`` as a new user runs it: the stand-ins, the Dagster webserver and cm_datacopy's daemon.

A backfill launched through the GraphQL mutation the UI's "Launch backfill" sends is run by the
daemon the command started (``cm-datacopy dagster-daemon``, whose backfill loop wakes every second)
until every partition is materialized; Ctrl-C (SIGINT) then stops everything the command started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from cm_datacopy_tests.dagster.stack import BIN, DagsterStack, free_port, processes_with_env
from cm_datacopy_tests.helpers import REPO

pytestmark = pytest.mark.slow

ROWS = 4_000  # per sample table: events is 2 chunks
DAEMON_HEALTH = '{ instance { daemonHealth { daemonStatus(daemonType: "BACKFILL") { healthy } } } }'


def test_ui_command_backfills_through_its_daemon_and_stops_everything_on_ctrl_c():
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as another user, who cannot enter
    # pytest's 0700 base directories.
    work = Path(tempfile.mkdtemp(prefix="cmdc-uicmd-"))
    work.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CM_DATACOPY_DEMO_POSTGRES", "CM_DATACOPY_CONFIG")}
    home = str((work / "ui" / "dagster_home").resolve())
    with open(work / "ui.log", "wb") as log:
        ui = subprocess.Popen(
            [str(BIN / "cm-datacopy"), "ui", "--workdir", str(work / "ui"), "--rows", str(ROWS), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        stack = DagsterStack(work, {}, port=port)
        stack.procs["ui"] = ui  # a wait ends at once, with the log's tail, if the command exits
        stack.wait("the webserver", lambda: len(stack.graphql("{ assetNodes { id } }")["assetNodes"]) == 8, 300)
        daemons = [pid for pid in processes_with_env("DAGSTER_HOME", home) if "daemon" in _cmdline(pid)]
        assert any("cm_datacopy.dagster_defs.daemon" in _cmdline(pid) for pid in daemons), [
            _cmdline(pid) for pid in daemons
        ]
        stack.wait(
            "the backfill loop's heartbeat",
            lambda: stack.graphql(DAEMON_HEALTH)["instance"]["daemonHealth"]["daemonStatus"]["healthy"],
            120,
        )

        events = ["analytics", "analytics", "events"]
        chunks = len(stack.partition_status(events)["unmaterializedPartitions"])
        assert chunks == 2
        stack.launch_backfill([events], "from the ui command's test")

        def all_materialized() -> bool:
            status = stack.partition_status(events)
            assert not status["failedPartitions"], status
            return not status["unmaterializedPartitions"] and not status["materializingPartitions"]

        stack.wait("the backfill", all_materialized, 120 + 30 * chunks)
        del stack.procs["ui"]
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in the command's terminal
        assert ui.wait(120) == 130
        assert not processes_with_env("DAGSTER_HOME", home), "cm-datacopy ui left processes behind"
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(30)
        for pid in processes_with_env("DAGSTER_HOME", home):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
