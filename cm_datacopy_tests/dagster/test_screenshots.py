"""The documentation's Dagster screenshots, taken from ``cm-datacopy ui``'s own set-up.

The set-up is ``ui_setup`` (the stand-ins with the sample tables, the Dagster home, both sources
planned); the real webserver and daemon run ``copy_<source>`` for both sources, launched as from the
UI's job page; headless Chromium renders the pages. Each page's rendered text is checked (the
table's progress on the overview, readable chunk keys and a chunk's figures on the partitions
page), so a page that shows something else fails the test. With ``CM_DATACOPY_SCREENSHOTS=docs``
the images replace those in ``docs/``; otherwise they stay in the test's directory.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from cm_datacopy.dagster_defs.ui import ui_setup
from cm_datacopy_tests.dagster.stack import DagsterStack
from cm_datacopy_tests.helpers import REPO

pytestmark = pytest.mark.slow

UI_ROWS = 20_000  # cm-datacopy ui's default
SHOTS_ENV = "CM_DATACOPY_SCREENSHOTS"


def _chromium() -> str | None:
    if found := shutil.which("chromium"):
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=600)
    return shutil.which("chromium")


def _render(chromium: str, url: str, out: Path) -> str:
    """Screenshot ``url`` into ``out``; returns the page's rendered DOM (a second load of the same page)."""
    dom = ""
    for mode in (f"--screenshot={out}", "--dump-dom"):
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--window-size=1600,1200",
                    "--hide-scrollbars",
                    "--virtual-time-budget=20000",
                    mode,
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
        dom = html.unescape(done.stdout) or dom
    assert out.is_file() and out.stat().st_size > 30_000, f"the screenshot of {url} is missing or blank"
    return dom


def test_screenshots_of_the_table_overview_and_the_chunk_partitions(tmp_path, monkeypatch):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed and could not be installed with apt-get (needs root and a network)")
    monkeypatch.delenv("CM_DATACOPY_DEMO_POSTGRES", raising=False)  # the embedded one, as a new user has
    saved = dict(os.environ)  # ui_setup exports Dagster's variables, as `cm-datacopy ui` does
    try:
        _shoot(chromium, tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if os.environ.get(SHOTS_ENV) == "docs":
        for name in ("dagster-overview.png", "dagster-partitions.png"):
            shutil.copyfile(tmp_path / name, REPO / "docs" / name)


def _shoot(chromium: str, tmp_path: Path) -> None:
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as another user, who cannot enter
    # pytest's 0700 base directories (one per xdist worker too).
    work = Path(tempfile.mkdtemp(prefix="cmdc-ui-"))
    work.chmod(0o755)
    try:
        _shoot_in(chromium, work, tmp_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _shoot_in(chromium: str, work: Path, tmp_path: Path) -> None:
    with ui_setup(work, UI_ROWS, Console(file=io.StringIO())) as setup, DagsterStack(work, setup.env) as stack:
        stack.start_webserver(lambda: len(stack.graphql("{ assetNodes { id } }")["assetNodes"]) == 8)
        stack.start_daemon()
        runs = [stack.launch_job(f"copy_{source}") for source in ("analytics", "conflict")]
        for run_id in runs:
            stack.wait_run(run_id, 600)
        stack.graphql("mutation { setNuxSeen }")  # as a user who closed the "join the community" dialog

        overview = _render(
            chromium, f"{stack.url}/assets/analytics/analytics/events", tmp_path / "dagster-overview.png"
        )
        for text in ("table progress", "rows copied", f"{UI_ROWS:,}", "100.0 %", "Latest check results"):
            assert text in overview, f"the overview does not show {text!r}"

        incidents = stack.partition_status(["conflict", "conflict", "incidents"])["materializedPartitions"]
        assert all("_to_" in key and "@" in key for key in incidents), incidents
        chosen = incidents[len(incidents) // 2]
        partitions = _render(
            chromium,
            f"{stack.url}/assets/conflict/conflict/incidents?view=partitions&partition={chosen}",
            tmp_path / "dagster-partitions.png",
        )
        for text in (*incidents[:3], "key range", "REPORTED_ON >=", "source checksum"):
            assert text in partitions, f"the partitions page does not show {text!r}"
    assert not stack.alive()
