"""The README's first command: the whole demo on embedded stand-ins, as a new user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def test_demo_runs_end_to_end_on_embedded_defaults():
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as another user, and every pytest
    # session on the machine resets /tmp/pytest-of-<user> to mode 0700.
    work = Path(tempfile.mkdtemp(prefix="cmdc-demo-"))
    work.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CM_DATACOPY_DEMO_POSTGRES"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cm_datacopy.cli", "demo", "--workdir", str(work / "demo")],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "embedded PostgreSQL" in out
    assert "analytics killed with SIGKILL after" in out
    assert "resuming run analytics-" in out
    assert out.count("│ yes   │") == 4, "every sample table matches its source row count"
    assert "demo succeeded" in out
