"""The docs cannot rot: every command, SQL block, Python snippet and config example in README.md and
docs/ runs against the stand-ins of `cm-datacopy demo --keep`; the --json keys, the configuration
reference, the Dagster names and the links are checked against the code.

Conventions of the docs (what this file relies on):
- ```bash blocks hold commands: each `cm-datacopy …` line is run (exit 0 expected) with `.demo/env`
  applied; other lines must be known below (with the test that covers them).
- ```sql blocks are diagnostic SQL for the demo's ledger (run in a transaction rolled back);
  ```sql setup blocks are a DBA's set-up, run in a fresh database; ```sql snowflake blocks are
  Snowflake SQL (the stand-in has no access control: not run).
- ```yaml blocks are whole config files; ```yaml fragment blocks are a source's settings, merged
  into the starter config's source of that name and validated; ```python blocks run; ```text /
  ```json are output.
- ```bash aws blocks are deployment commands against a real AWS account (not reachable here): each
  line must start with a command of AWS_COMMANDS, which names what the tests run instead.
- `<!-- json: CMD -->` before a ```json block: the keys CMD prints, at every level.
- `<run_id>` stands for the id of the latest run of the source in question.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from psycopg import sql

from cm_datacopy.cli import main as cli_main
from cm_datacopy.cli.reference import BEGIN, END, reference, undocumented
from cm_datacopy.cli.starter import STARTER
from cm_datacopy.config import load_config
from cm_datacopy_tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
# Pages written alongside this guide (deployment, real Snowflake): linked before they land here.
WRITTEN_ELSEWHERE = {"deploy-lambda.md", "deploy-ecs.md", "real-snowflake.md"}

# Lines of ```bash blocks that are not `cm-datacopy` commands run here, and what covers them.
NOT_RUN_HERE = {
    "make demo": "test_demo.py",
    "make test": "the suite itself",
    "make ui": "dagster/test_e2e.py",
    "source .venv/bin/activate": "the tests run the venv's cm-datacopy",
    "source .demo/env": "applied to every command here",
    ".venv/bin/python -m cm_datacopy_tests.faults": "test_faults.py (10 trials)",
}
# Commands of ```bash aws blocks (deployment, against a real AWS account), and what runs instead here.
AWS_COMMANDS = {
    "docker build": "aws/test_packaging.py replays the Dockerfile's build without a daemon",
    "docker tag": "(image publishing: no registry here)",
    "docker push": "(image publishing: no registry here)",
    "aws ecr": "(image publishing: no registry here)",
    "aws secretsmanager": "aws/ tests read the worker's secret from moto's Secrets Manager",
    "aws s3api": "aws/ tests carry Pipes messages through moto's S3",
    "aws lambda": "aws/test_lambda.py invokes the real handler through a local Invoke API",
    "aws ecs": "aws/test_ecs.py runs the task definition's command through moto's ECS",
    "sysctl": "(the Dagster host's kernel setting)",
}
# cm-datacopy commands that this file does not run as written, and what covers them.
SPECIAL = {
    "cm-datacopy demo --keep": "the kept_demo fixture",
    "cm-datacopy demo --stop": "test_a_kept_demo_refuses_a_second_one_and_stops",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    info: str
    text: str
    before: str  # the text just above the fence

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(pages: list[Path] = DOCS) -> list[Block]:
    found = []
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            opening = re.match(r"^(\s*)```(.*)$", lines[i])
            if opening is None:
                i += 1
                continue
            indent, info = opening.group(1), opening.group(2).strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            body = textwrap.dedent("\n".join(line[len(indent) :] for line in lines[i + 1 : end]))
            before = "\n".join(lines[max(0, i - 2) : i])
            found.append(Block(page, i + 1, info, body, before))
            i = end + 1
    return found


def commands(info: str = "bash") -> list[tuple[Block, str]]:
    """(block, command) of every block fenced as ``info``, comments stripped, continuation lines joined."""
    found = []
    for block in blocks():
        if block.info != info:
            continue
        joined = re.sub(r"\\\n\s*", " ", block.text)
        for raw in joined.splitlines():
            line = raw.split(" #")[0].strip() if not raw.lstrip().startswith("#") else ""
            if line:
                found.append((block, line))
    return found


# ---- the kept demo ------------------------------------------------------------------------------------


@dataclass
class Demo:
    cwd: Path
    env: dict[str, str]
    pg: dict[str, Any]

    def run(self, line: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        args = shlex.split(line)
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def latest_run(self, source: str) -> str:
        with psycopg.connect(**self.pg) as conn:
            row = conn.execute(
                "SELECT run_id FROM migration_status.migration_runs WHERE source = %s ORDER BY started_at DESC LIMIT 1",
                (source,),
            ).fetchone()
        assert row, f"no run of {source}"
        return str(row[0])


def _fakesnow_alive(pid: int) -> bool:
    try:
        return b"cm_datacopy.standin.snowflake" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(scope="module")
def kept_demo() -> Any:
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as another user, and every pytest
    # session on the machine resets /tmp/pytest-of-<user> to mode 0700 (PostgreSQL then loses its data
    # directory and shuts down).
    cwd = Path(tempfile.mkdtemp(prefix="cmdc-docs-"))
    cwd.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CM_DATACOPY_DEMO_POSTGRES", "CM_DATACOPY_CONFIG")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    started = subprocess.run(
        [str(BIN / "cm-datacopy"), "demo", "--keep", "--rows", "6000"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    state_file = cwd / ".demo" / "standins.json"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "source .demo/env" in started.stdout and "cm-datacopy demo --stop" in started.stdout
        env_file = cwd / ".demo" / "env"
        assert env_file.stat().st_mode & 0o777 == 0o600, "the env file holds a password"
        for line in env_file.read_text().splitlines():
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                env[name] = shlex.split(value)[0] if value else ""
        pg = {"host": env["PGHOST"], "port": env["PGPORT"], "user": env["PGUSER"], "dbname": env["PGDATABASE"]}
        yield Demo(cwd, env, pg)
    finally:
        pid = json.loads(state_file.read_text())["snowflake_pid"] if state_file.exists() else None
        subprocess.run([str(BIN / "cm-datacopy"), "demo", "--stop"], cwd=cwd, env=env, capture_output=True, timeout=120)
        if pid and _fakesnow_alive(pid):
            os.kill(pid, 9)
        shutil.rmtree(cwd, ignore_errors=True)


# ---- what the docs show, run --------------------------------------------------------------------------


def test_every_documented_command_runs(kept_demo: Demo):
    problems, ran = [], 0
    for block, line in commands():
        if line.startswith("cm-datacopy"):
            if line in SPECIAL:
                continue
            if line.startswith("cm-datacopy init"):
                for name in ("cm_datacopy.yaml", *re.findall(r"--output (\S+)", line)):
                    (kept_demo.cwd / name).unlink(missing_ok=True)
            command = line
            for source in ("analytics", "conflict"):
                if f" {source}" in line and "<run_id>" in line:
                    command = line.replace("<run_id>", kept_demo.latest_run(source))
            result = kept_demo.run(command)
            ran += 1
            if result.returncode != 0 or "Traceback" in result.stderr:
                problems.append(f"{block.where}: `{line}` exit {result.returncode}: {result.stderr.strip()[-400:]}")
        elif not any(line.startswith(prefix) for prefix in NOT_RUN_HERE):
            problems.append(f"{block.where}: `{line}` is not a cm-datacopy command this test knows")
    lines = [line for _, line in commands()]
    problems += [f"unused entry {p!r}" for p in NOT_RUN_HERE if not any(line.startswith(p) for line in lines)]
    problems += [f"unused entry {p!r}" for p in SPECIAL if p not in lines]
    assert not problems, "\n".join(problems)
    assert ran >= 30, f"only {ran} documented commands found"


def test_every_diagnostic_query_of_the_monitoring_guide_runs_on_a_real_ledger(kept_demo: Demo):
    """The guide's SQL, as a user pastes it into psql (``<run_id>``: the demo's latest run of analytics)."""
    run_id = kept_demo.latest_run("analytics")
    queries = [
        statement.strip()
        for block in blocks([REPO / "docs" / "monitoring.md"])
        if block.lang == "sql"
        for statement in re.sub(r"--[^\n]*", "", block.text).replace("'<run_id>'", f"'{run_id}'").split(";")
        if statement.strip()
    ]
    assert len(queries) >= 9, queries
    answered = 0
    with psycopg.connect(**kept_demo.pg) as conn:
        for query in queries:
            assert not re.search(r"'<\w+>'", query), f"a placeholder is left: {query}"
            rows = conn.execute(query).fetchall()
            answered += bool(rows)
        conn.rollback()
    assert answered >= 4, "the guide's queries found nothing in a ledger holding completed runs"


def test_every_documented_aws_command_is_covered():
    lines = commands("bash aws")
    assert lines, "the deployment pages show their AWS commands in ```bash aws blocks"
    problems = [
        f"{block.where}: `{line}` is not a deployment command this test knows"
        for block, line in lines
        if not any(line.startswith(prefix) for prefix in AWS_COMMANDS)
    ]
    problems += [f"unused entry {p!r}" for p in AWS_COMMANDS if not any(line.startswith(p) for _, line in lines)]
    assert not problems, "\n".join(problems)


def test_every_documented_sql_block_runs(kept_demo: Demo):
    problems, ran = [], 0
    run_id = kept_demo.latest_run("analytics")
    for block in blocks():
        if block.lang != "sql":
            continue
        tags = block.info.split()[1:]
        if tags == ["snowflake"]:
            continue
        text = block.text.replace("<run_id>", run_id)
        try:
            if tags == ["setup"]:
                _run_setup(kept_demo.pg, text)
            else:
                assert not tags, f"unknown sql block tags {tags}"
                with psycopg.connect(**kept_demo.pg) as conn, conn.transaction(force_rollback=True):
                    conn.execute(text)
            ran += 1
        except (psycopg.Error, AssertionError) as exc:
            problems.append(f"{block.where}: {str(exc).strip().splitlines()[0]}")
    log = kept_demo.cwd / ".demo" / "postgres" / "pgdata" / "log"
    tail = "\n".join(log.read_text().splitlines()[-15:]) if problems and log.exists() else ""
    assert not problems, "\n".join(problems) + "\nserver log:\n" + tail
    assert ran >= 15, f"only {ran} SQL blocks found"


def _run_setup(pg: dict[str, Any], text: str) -> None:
    """A DBA's set-up SQL in a fresh database, as a role of its own; rolled back."""
    db, role = f"cmdc_docs_{uuid.uuid4().hex[:8]}", f"cmdc_docs_{uuid.uuid4().hex[:8]}"
    text = re.sub(r"\bwarehouse_copy\b", db, re.sub(r"\bcm_datacopy\b", role, text))
    with psycopg.connect(**pg, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        with psycopg.connect(**{**pg, "dbname": db}) as conn, conn.transaction(force_rollback=True):
            conn.execute(text)
    finally:
        with psycopg.connect(**pg, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))


def test_every_documented_python_snippet_runs(kept_demo: Demo, monkeypatch: pytest.MonkeyPatch):
    snippets = [b for b in blocks() if b.lang == "python"]
    assert snippets
    for name, value in kept_demo.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(kept_demo.cwd)
    for block in snippets:
        exec(compile(block.text, block.where, "exec"), {})


def test_every_documented_config_is_valid(tmp_path: Path):
    import yaml

    configs = [b for b in blocks() if b.info == "yaml"]
    assert len(configs) >= 3
    for i, block in enumerate(configs):
        path = tmp_path / f"config{i}.yaml"
        path.write_text(block.text)
        load_config(path)  # raises ConfigError naming the problem
    fragments = [b for b in blocks() if b.info == "yaml fragment"]
    assert fragments, "the deployment pages show a source's compute settings as ```yaml fragment blocks"
    for i, block in enumerate(fragments):
        whole = yaml.safe_load(STARTER)
        for name, body in yaml.safe_load(block.text)["sources"].items():
            whole["sources"][name].update(body)
        path = tmp_path / f"fragment{i}.yaml"
        path.write_text(yaml.safe_dump(whole))
        load_config(path)


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None


def _same_keys(documented: Any, actual: Any, where: str) -> list[str]:
    if isinstance(documented, dict) and isinstance(actual, dict):
        problems = (
            [f"{where}: keys {sorted(set(documented) ^ set(actual))} differ"] if set(documented) != set(actual) else []
        )
        for key in set(documented) & set(actual):
            problems += _same_keys(documented[key], actual[key], f"{where}.{key}")
        return problems
    if isinstance(documented, list) and isinstance(actual, list) and documented and actual:
        return _same_keys(documented[0], actual[0], f"{where}[]")
    return []


def test_the_documented_json_keys_are_what_the_commands_print(kept_demo: Demo):
    examples = [(re.search(r"<!-- json: (.+?) -->", b.before), b) for b in blocks() if b.lang == "json"]
    checked = 0
    for match, block in examples:
        if match is None:
            continue
        result = kept_demo.run(match.group(1))
        assert result.returncode == 0, result.stderr
        problems = _same_keys(_shape(json.loads(block.text)), _shape(json.loads(result.stdout)), match.group(1))
        assert not problems, f"{block.where}: " + "; ".join(problems)
        checked += 1
    assert checked == 5


# ---- what the docs say about the code -----------------------------------------------------------------


def test_the_configuration_reference_is_generated_from_the_models():
    assert undocumented() == [], "give these fields a description (or a note in cm_datacopy/cli/reference.py)"
    text = (REPO / "docs" / "configuration.md").read_text()
    documented = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert documented == reference(), "run: python -m cm_datacopy.cli.reference docs/configuration.md"


def test_every_command_and_option_is_documented():
    text = (REPO / "docs" / "commands.md").read_text()
    for name, command in cli_main.commands.items():
        assert f"`{name}" in text, f"command {name} is not in docs/commands.md"
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help",):
                flags = [o for o in param.opts if o.startswith("--")]
                assert any(flag in text for flag in flags), f"{name} {flags} is not in docs/commands.md"


def test_the_documented_dagster_names_exist(tmp_path: Path):
    import dagster as dg

    from cm_datacopy.dagster_defs import build_definitions

    config = tmp_path / "cm_datacopy.yaml"
    config.write_text(STARTER)
    defs = build_definitions(config)
    specs = list(defs.resolve_all_asset_specs())
    existing = {
        "asset group": {s.group_name for s in specs},
        "asset": {s.key.to_user_string() for s in specs},
        "asset check": {
            f"{k.name} on {k.asset_key.to_user_string()}" for k in defs.resolve_asset_graph().asset_check_keys
        },
        "job": {j.name for j in defs.resolve_all_job_defs()},
        "sensor": {s.name for s in defs.sensors or []},
        "pool": {defs.resolve_assets_def(s.key).op.pool for s in specs},
    }
    text = (REPO / "docs" / "dagster.md").read_text()
    table = text[text.index("<!-- dagster names") :].split("\n\n")[0]
    rows = re.findall(r"^\| ([a-z ]+) \| `([^`]+)`(?: on `([^`]+)`)? \|", table, re.M)
    assert len(rows) >= 8
    for kind, name, on in rows:
        shown = f"{name} on {on}" if on else name
        assert shown in existing[kind], f"docs/dagster.md names {kind} {shown!r}; the definitions have {existing[kind]}"
    del dg


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_between_pages_resolve():
    problems = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if dest.name in WRITTEN_ELSEWHERE and not dest.exists():
                continue
            if not dest.exists():
                problems.append(f"{page.name}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{page.name}: no heading for #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


# ---- last: the kept demo itself -------------------------------------------------------------------------


def test_a_kept_demo_refuses_a_second_one_and_stops(kept_demo: Demo):
    state = json.loads((kept_demo.cwd / ".demo" / "standins.json").read_text())
    again = kept_demo.run("cm-datacopy demo --keep")
    assert again.returncode == 2 and "a kept demo is running in .demo" in again.stderr, again.stderr
    stopped = kept_demo.run("cm-datacopy demo --stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the Snowflake stand-in" in stopped.stdout and "stopped the embedded PostgreSQL" in stopped.stdout
    assert not _fakesnow_alive(state["snowflake_pid"])
    assert not (kept_demo.cwd / ".demo" / "postgres" / "pgdata" / "postmaster.pid").exists()
    assert not (kept_demo.cwd / ".demo" / "env").exists()
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(**kept_demo.pg, connect_timeout=3):
        pytest.fail("the demo's PostgreSQL still answers")
