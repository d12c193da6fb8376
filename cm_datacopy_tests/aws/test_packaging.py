"""The core install and the worker image, without a Docker daemon.

The Dockerfile is read and its build replayed on this machine: a build context holding only what its
COPY lines copy, the wheel built from it, then ``pip install --target`` as its RUN line does (no
extras). The installed tree must hold no Dagster, and the Lambda handler and the ECS entry point must
copy a real chunk from it with site-packages switched off (``python -S``). Then ``pip install .`` into a
new virtual environment must give a working ``cm-datacopy run``. Both installs reuse pip's cache.

What this cannot check: the base image itself (its Python is 3.12; the replay uses this machine's).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cm_datacopy.workers.protocol import ChunkRequest
from cm_datacopy_tests.aws.conftest import Planned, worker_env
from cm_datacopy_tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
DAGSTER_PACKAGES = {"dagster", "dagster_aws", "dagster_webserver", "dagster_postgres", "dagster_graphql"}


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuations joined and ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    out = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        out.append((op.upper(), re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest).strip()))
    return out


def copied_sources() -> list[str]:
    return [src for op, rest in instructions() if op == "COPY" and "--from" not in rest for src in rest.split()[:-1]]


def test_dockerfile_builds_the_worker_image_from_the_lambda_base():
    steps = instructions()
    assert {rest.split()[0] for op, rest in steps if op == "FROM"} == {"public.ecr.aws/lambda/python:3.12"}
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "cm_datacopy/", "docker/entrypoint.sh"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file"
        assert not src.startswith(("cm_datacopy_tests", ".venv", "benchmarks")), src
    installs = [part for op, rest in steps if op == "RUN" for part in rest.split("&&") if "pip install" in part]
    assert installs and all("--target" in part and "[" not in part for part in installs)  # no extras
    (cmd,) = [json.loads(rest) for op, rest in steps if op == "CMD"]
    module, _, function = cmd[0].rpartition(".")
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    assert cmd == ["cm_datacopy.workers.lambda_handler.handler"]
    assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    (entry,) = [json.loads(rest) for op, rest in steps if op == "ENTRYPOINT"]
    assert f"docker/entrypoint.sh {entry[0]}" in [rest for op, rest in steps if op == "COPY"]


def test_entrypoint_serves_both_runtimes(tmp_path):
    runtime = tmp_path / "lambda-entrypoint.sh"
    runtime.write_text('#!/bin/sh\necho "lambda runtime: $*"\n')
    runtime.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "CM_DATACOPY_LAMBDA_ENTRYPOINT": str(runtime)}

    def run(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(ENTRYPOINT), *argv], capture_output=True, text=True, env={**env, **extra})

    handler = "cm_datacopy.workers.lambda_handler.handler"
    assert run(handler, AWS_LAMBDA_RUNTIME_API="127.0.0.1:9001").stdout.strip() == f"lambda runtime: {handler}"
    assert run(handler).stdout.strip() == f"lambda runtime: {handler}"  # docker run IMAGE (the emulator)
    assert run("sh", "-c", "echo ecs command").stdout.strip() == "ecs command"  # ECS: the command override
    assert run().returncode == 64


def build_context(where: Path) -> Path:
    """A copy of what the Dockerfile copies: the package builds from it alone (and no build/ lands here)."""
    for src in copied_sources():
        source, target = REPO / src, where / src
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return where


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """The image's /var/task, replayed: the wheel from the COPY'd files only, installed with --target."""
    with tempfile.TemporaryDirectory(prefix="cm-image-") as tmp:
        context = build_context(Path(tmp, "context"))
        wheels, root = Path(tmp, "wheels"), Path(tmp, "var_task")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(context)], check=True)
        (wheel,) = wheels.glob("*.whl")
        subprocess.run([*pip, "install", "--target", str(root), str(wheel)], check=True)
        with zipfile.ZipFile(wheel) as zf:
            (root / "wheel-files.txt").write_text("\n".join(zf.namelist()))
        yield root


@pytest.mark.slow
def test_the_image_holds_the_whole_package_and_no_dagster(image_root):
    in_wheel = {n for n in (image_root / "wheel-files.txt").read_text().splitlines() if n.endswith(".py")}
    in_repo = {str(p.relative_to(REPO)) for p in (REPO / "cm_datacopy").rglob("*.py")}
    assert in_wheel == in_repo
    installed = {p.name for p in image_root.iterdir()}
    assert {"cm_datacopy", "dagster_pipes", "boto3", "psycopg", "pyarrow", "pgpq", "snowflake"} <= installed
    assert not installed & DAGSTER_PACKAGES


def isolated(root: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Python without site-packages (this environment has Dagster): only the image's tree."""
    return subprocess.run(
        [sys.executable, "-S", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(root), **env},
    )


@pytest.mark.slow
def test_the_images_handler_and_ecs_entry_point_copy_chunks(image_root, plan_source):
    planned: Planned = plan_source()
    tasks = planned.tasks()
    handler = (
        "import json, sys\n"
        "from cm_datacopy.workers.lambda_handler import handler\n"
        "class Context:\n"
        "    def get_remaining_time_in_millis(self): return 120_000\n"
        "print(json.dumps(handler(json.loads(sys.argv[1]), Context())))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_aws')))\n"
    )
    request = ChunkRequest(tasks[0], planned.cfg.fingerprint()).to_json()
    ran = isolated(image_root, ["-c", handler, json.dumps(request)], worker_env(planned))
    assert ran.returncode == 0, ran.stderr
    result, modules = ran.stdout.strip().splitlines()[-2:]
    assert json.loads(result)["outcome"] == "copied" and modules == "[]"
    request = ChunkRequest(tasks[1], planned.cfg.fingerprint()).to_json()
    ecs = isolated(
        image_root, ["-m", "cm_datacopy.workers.ecs"], {**worker_env(planned), "CM_DATACOPY_CHUNK": json.dumps(request)}
    )
    assert ecs.returncode == 0, ecs.stderr
    assert json.loads(ecs.stdout.strip().splitlines()[-1])["outcome"] == "copied"
    assert planned.target_count() == sum(r["rows_copied"] or 0 for r in planned.chunk_rows()) > 0


@pytest.mark.slow
def test_the_core_install_runs_the_cli_without_dagster(plan_source):
    planned: Planned = plan_source()
    with tempfile.TemporaryDirectory(prefix="cm-core-") as tmp:
        venv = Path(tmp, "venv")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        source = build_context(Path(tmp, "source"))
        subprocess.run([*pip, "install", "-q", str(source)], check=True, timeout=900)
        listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True, check=True).stdout
        names = {p["name"].lower().replace("-", "_") for p in json.loads(listed)}
        assert {"cm_datacopy", "dagster_pipes", "boto3"} <= names and not names & DAGSTER_PACKAGES
        env = {**os.environ, **worker_env(planned)}
        cli = str(venv / "bin" / "cm-datacopy")
        run = subprocess.run([cli, "run", "analytics"], capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        ui = subprocess.run([cli, "ui"], capture_output=True, text=True, timeout=60, env=env)
        assert ui.returncode == 2 and "needs the dagster extra: pip install 'cm_datacopy[dagster]'" in ui.stderr
        assert "Traceback" not in ui.stderr
    assert planned.target_count() == 5_000
