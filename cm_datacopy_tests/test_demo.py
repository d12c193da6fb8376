"""The README's first command: the whole demo on embedded stand-ins, as a new user runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_end_to_end_on_embedded_defaults(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CM_DATACOPY_DEMO_POSTGRES"}
    result = subprocess.run(
        [sys.executable, "-m", "cm_datacopy.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "embedded PostgreSQL" in out
    assert "analytics killed with SIGKILL after" in out
    assert "resuming run analytics-" in out
    assert out.count("│ yes   │") == 4, "every sample table matches its source row count"
    assert "demo succeeded" in out
