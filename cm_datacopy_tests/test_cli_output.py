"""What `cm-datacopy` shows: progress off and on a terminal, status and its reasons, history, plan,
exit codes, --version, init, YAML errors with their position."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from rich.console import Console

from cm_datacopy.chunk import ChunkResult, ChunkTask
from cm_datacopy.cli.progress import RunDisplay
from cm_datacopy.cli.starter import STARTER
from cm_datacopy.ranges import Chunk
from cm_datacopy.run.resume import RunStart
from cm_datacopy.run.runner import RunPlan, TableTotals
from cm_datacopy_tests.helpers import REPO, cli, sf_execute, source_body, write_config

CHUNK_LINE = re.compile(
    r"^\d\d:\d\d:\d\d copied (?P<table>copy\.\w+)#(?P<chunk>\d{5}): (?P<rows>[\d,]+) rows in [\d.]+ s "
    r"\([\d,]+ rows/s\), attempt (?P<attempt>\d+)"
)


def _tables(snowflake_server: Any, sf_db: str, rows: int = 5000) -> list[dict[str, Any]]:
    sf_execute(
        snowflake_server,
        sf_db,
        "USE SCHEMA PUBLIC",
        f"CREATE TABLE EVENTS AS SELECT seq8()::NUMBER(38,0) AS ID, 'e' || seq8() AS BODY "
        f"FROM TABLE(GENERATOR(ROWCOUNT => {rows}))",
        "CREATE TABLE USERS AS SELECT seq8()::NUMBER(38,0) AS ID FROM TABLE(GENERATOR(ROWCOUNT => 300))",
    )
    return [
        {"source": "EVENTS", "target_schema": "copy", "chunk_key": "ID", "chunk_size": 500},
        {"source": "USERS", "target_schema": "copy"},
    ]


def test_off_a_terminal_a_line_per_chunk_and_a_summary_per_table(snowflake_server, sf_db, pg_db, config_path):
    write_config(config_path, snowflake_server, sf_db, pg_db, _tables(snowflake_server, sf_db), workers=2)
    result = cli(config_path, "run", "analytics")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [m for line in result.stdout.splitlines() if (m := CHUNK_LINE.match(line))]
    assert sorted((m["table"], m["chunk"]) for m in lines) == [("copy.events", f"{i:05d}") for i in range(10)] + [
        ("copy.users", "00000")
    ]
    assert sum(int(m["rows"].replace(",", "")) for m in lines) == 5300
    assert re.search(
        r"table copy\.events: 10/10 chunks done, 5,000 rows copied in [\d.]+ s \([\d,]+ rows/s\)", result.stdout
    )
    assert re.search(r"table copy\.users: 1/1 chunks done, 300 rows copied", result.stdout)
    assert "analytics: 11 chunks to copy in 2 tables" in result.stdout
    assert re.search(r"completed run analytics-\S+: copied 11 of 11 chunks, 5,300 rows in", result.stdout)
    # Log records are lines with a time stamp on stderr (the stand-in has no Time Travel).
    assert re.search(r"^\d\d:\d\d:\d\d WARNING cm_datacopy\.snowflake\.catalog: .*Time Travel", result.stderr, re.M)

    verbose = cli(config_path, "run", "analytics", "--no-resume", "-v")
    assert verbose.returncode == 0
    assert "copy.events: 0/10 chunks done, 10 to copy" in verbose.stdout
    detail = re.findall(r"attempt 1, [\d.]+ MB, checksums equal, worker \S+", verbose.stdout)
    assert len(detail) == 11, verbose.stdout


def test_on_a_terminal_bars_show_rows_per_second_and_time_left_and_logs_print_above_them():
    """The live display with a real rich console in terminal mode: a log record printed while bars are
    drawn comes out as a whole line of its own, not inside a bar's line."""
    out = io.StringIO()
    live_console = Console(file=out, force_terminal=True, width=120, color_system=None)
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(file=io.StringIO()), show_path=False, show_time=False)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        display = RunDisplay("analytics", live_console, threading.Event(), live=True, verbose=False)
        chunks = [Chunk("copy.events", i, "ID", "int", str(i * 10), str(i * 10 + 10)) for i in range(4)]
        with display.showing():
            display("start", RunStart("analytics-1", False, 0, "starting a new run"))
            display("plan", RunPlan(chunks, [TableTotals("copy.events", 4, 0, 0)]))
            display("chunk_start", chunks[0])
            display("chunk", ChunkResult(ChunkTask("analytics", "r", "copy.events", 0), "copied", rows=10, seconds=0.1))
            display.bar.refresh()
            logging.getLogger("cm_datacopy.test").warning("a warning in the middle of the copy")
            display("chunk_start", chunks[1])
            display.bar.refresh()
    finally:
        root.removeHandler(handler)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    pieces = [p.strip() for p in re.split(r"[\r\n]", screen) if p.strip()]
    warning = [p for p in pieces if "a warning in the middle of the copy" in p]
    assert warning and all("chunks" not in p for p in warning), pieces
    bars = [p for p in pieces if p.startswith("copy.events")]
    assert bars and re.search(r"1/4 chunks\s+10 rows\s+[\d,]+ rows/s\s+0:00:\d\d left", bars[-1]), bars
    assert any(p.startswith("all tables") for p in pieces), pieces


def test_plan_never_drops_a_chunk_silently(snowflake_server, sf_db, pg_db, config_path):
    tables = _tables(snowflake_server, sf_db)
    tables[0]["chunk_size"] = 250  # 20 chunks
    write_config(config_path, snowflake_server, sf_db, pg_db, tables)
    result = cli(config_path, "plan", "analytics")
    assert result.returncode == 0, result.stderr
    shown = re.findall(r"│ (\d{5}) │ (ID [^│]*?)\s+│", result.stdout)
    assert [index for index, _ in shown] == [f"{i:05d}" for i in (*range(6), *range(14, 20))]
    assert "… 8 more chunks (plan --all-chunks lists them) …" in result.stdout
    every = cli(config_path, "plan", "analytics", "--all-chunks")
    assert re.findall(r"│ (\d{5}) │ ID", every.stdout) == [f"{i:05d}" for i in range(20)]
    as_json = json.loads(cli(config_path, "plan", "analytics", "--json").stdout)
    events = as_json["tables"][0]
    assert [c["chunk"] for c in events["chunks"]] == list(range(20))
    # Consecutive ranges meet: no gap between chunks.
    assert all(a["upper"] == b["lower"] for a, b in zip(events["chunks"], events["chunks"][1:], strict=False))


def test_status_says_why_a_table_with_every_chunk_done_failed_and_a_publish_only_resume_says_so(
    snowflake_server, sf_db, pg_db, config_path
):
    tables = _tables(snowflake_server, sf_db)
    write_config(config_path, snowflake_server, sf_db, pg_db, tables)
    assert cli(config_path, "run", "analytics").returncode == 0
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "DELETE FROM EVENTS WHERE ID >= 1000")
    refused = cli(config_path, "run", "analytics")
    assert refused.returncode == 1
    status = cli(config_path, "status", "analytics")
    flat = " ".join(status.stdout.split())
    assert re.search(r"copy\.events │ failed │ (\d+)/\1 │ 0 │ 1,000 │", flat), status.stdout
    assert "copy.events is failed: all chunks copied and verified; not published: the swap was refused" in flat
    assert "last error:" in flat and "refusing to publish copy.events" in flat
    as_json = json.loads(cli(config_path, "status", "analytics", "--json").stdout)
    events = next(t for t in as_json["tables"] if t["table"] == "copy.events")
    assert events["status"] == "failed" and events["chunks_done"] == events["chunks_total"] > 0
    assert events["note"].startswith("all chunks copied and verified; not published")

    raw = yaml.safe_load(config_path.read_text())
    raw["sources"]["analytics"]["tables"][0]["publish_min_fraction"] = 0.05
    config_path.write_text(yaml.safe_dump(raw))
    resumed = cli(config_path, "run", "analytics")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "0 chunks" not in resumed.stdout and "0 rows/s" not in resumed.stdout
    assert re.search(r"completed run \S+: nothing left to copy; published copy\.events", resumed.stdout)


def test_status_tells_a_stalled_chunk_whose_worker_is_gone_from_one_being_copied(
    snowflake_server, sf_db, pg_db, config_path
):
    """What a killed worker (or a Lambda/ECS task that ended without a report) leaves: its committed claim,
    status running. Once older than chunk_timeout_seconds no transaction of it can be alive: status says so."""
    write_config(config_path, snowflake_server, sf_db, pg_db, _tables(snowflake_server, sf_db), workers=2)
    assert cli(config_path, "run", "analytics").returncode == 0
    with psycopg.connect(**pg_db, autocommit=True) as conn:
        conn.execute(
            "UPDATE migration_status.migration_runs SET status = 'running', finished_at = NULL "
            "WHERE source = 'analytics'"
        )
        for index, claimed in ((3, "now() - interval '2 hours'"), (4, "now()")):
            conn.execute(
                "UPDATE migration_status.migration_chunk_status SET status = 'running', worker = 'lambda:req-1', "
                f"started_at = {claimed}, finished_at = NULL WHERE table_key = 'copy.events' AND chunk_index = %s",
                (index,),
            )
    as_json = json.loads(cli(config_path, "status", "analytics", "--json").stdout)
    chunks = {c["chunk"]: c for c in as_json["problem_chunks"]}
    assert (chunks[3]["stalled"], chunks[4]["stalled"]) == (True, False)
    events = next(t for t in as_json["tables"] if t["table"] == "copy.events")
    assert events["note"].startswith("2 chunks left; 1 stalled: claimed longer ago than chunk_timeout_seconds")
    flat = " ".join(cli(config_path, "status", "analytics").stdout.split())
    assert "(stalled: claimed by lambda:req-1 at" in flat and "(being copied by lambda:req-1)" in flat

    # Within chunk_timeout_seconds a claim may still be copying: not stalled.
    raw = yaml.safe_load(config_path.read_text())
    raw["sources"]["analytics"]["chunk_timeout_seconds"] = 3 * 3600
    config_path.write_text(yaml.safe_dump(raw))
    as_json = json.loads(cli(config_path, "status", "analytics", "--json").stdout)
    assert not any(c["stalled"] for c in as_json["problem_chunks"])


def test_status_of_every_source_and_history(snowflake_server, sf_db, pg_db, config_path):
    tables = _tables(snowflake_server, sf_db)
    other = source_body(snowflake_server, sf_db, pg_db, [{"source": "USERS", "target_schema": "other"}])
    write_config(config_path, snowflake_server, sf_db, pg_db, tables, extra_sources={"conflict": other})
    for args in (("run", "analytics"), ("run", "analytics", "--no-resume")):
        assert cli(config_path, *args).returncode == 0
    overview = cli(config_path, "status")
    assert overview.returncode == 0, overview.stderr
    assert re.search(
        r"│ analytics │ analytics-\S+ │ completed │ 11/11 chunks \(100%\) │ 5,300 │ \d+ s ago", overview.stdout
    )
    assert re.search(r"│ conflict\s+│ –\s+│ no runs", overview.stdout), overview.stdout
    as_json = json.loads(cli(config_path, "status", "--json").stdout)
    assert [(s["source"], s["run"] and s["run"]["status"]) for s in as_json["sources"]] == [
        ("analytics", "completed"),
        ("conflict", None),
    ]

    history = cli(config_path, "history", "analytics")
    runs = re.findall(r"│ (analytics-\S+) │ (\w+)\s+│", history.stdout)
    assert [status for _, status in runs] == ["completed", "completed"]
    listed = json.loads(cli(config_path, "history", "analytics", "--json").stdout)
    assert [r["run"]["run_id"] for r in listed["runs"]] == [run_id for run_id, _ in runs]
    assert listed["runs"][0]["rows_copied"] == 5300


def test_exit_codes_and_messages_when_a_database_cannot_be_reached(snowflake_server, sf_db, pg_db, config_path):
    tables = _tables(snowflake_server, sf_db)
    unreachable = {**pg_db, "host": "127.0.0.1", "port": 1}
    write_config(config_path, snowflake_server, sf_db, unreachable, tables)
    for args in (("status", "analytics"), ("history", "analytics"), ("run", "analytics"), ("plan", "analytics")):
        result = cli(config_path, *args)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert "cannot connect to PostgreSQL 127.0.0.1:1" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    overview = cli(config_path, "status")
    assert overview.returncode == 2 and "cannot read" in overview.stdout


def test_version_and_help():
    result = subprocess.run([sys.executable, "-m", "cm_datacopy.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and re.fullmatch(r"cm-datacopy, version \d+\.\d+\.\d+\S*\n", result.stdout)


def test_init_writes_the_starter_which_is_the_shipped_config(tmp_path):
    assert (REPO / "cm_datacopy.yaml").read_text() == STARTER, "run 'cm-datacopy init --force' to refresh it"
    env = {**os.environ}
    env.pop("CM_DATACOPY_CONFIG", None)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "cm_datacopy.cli", *a], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    first = run("init")
    assert first.returncode == 0 and (tmp_path / "cm_datacopy.yaml").read_text() == STARTER
    again = run("init")
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    valid = run("validate")
    assert valid.returncode == 0 and "ok analytics" in valid.stdout and "ok conflict" in valid.stdout
    raw = yaml.safe_load(STARTER)
    snowflake = [raw["sources"][name]["snowflake"] for name in ("analytics", "conflict")]
    assert "password_env" in snowflake[0] and "private_key_file_env" in snowflake[1], "both auth methods"


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("sources:\n  analytics:\n    snowflake:\n      account: x\n     user: y\n", ":5:6:", "expected <block end>"),
        ("sources:\n  a: [1, 2\n", ":3:1:", "expected ',' or ']'"),
        ("sources:\n\ta: 1\n", ":2:1:", "found character '\\t' that cannot start any token"),
    ],
)
def test_a_yaml_syntax_error_keeps_its_line_and_column(tmp_path: Path, text: str, where: str, what: str):
    path = tmp_path / "cm_datacopy.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "cm_datacopy.cli", "--config", str(path), "validate"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{path}{where} not valid YAML: {what}" in " ".join(result.stderr.split()), result.stderr
