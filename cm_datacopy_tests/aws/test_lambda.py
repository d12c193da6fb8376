"""Chunks on Lambda: the real dispatcher and boto3 client, a local Lambda running our real handler in
child processes (``fake_lambda.py``), real copies from the Snowflake stand-in into PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from cm_datacopy.dagster_defs.compute.lambda_ import LambdaDispatcher
from cm_datacopy.run.verify import verify_table
from cm_datacopy_tests.aws.conftest import (
    BUCKET,
    EVENTS_ROWS,
    FUNCTION,
    Planned,
    allowed_actions,
    lambda_compute,
    record_calls,
    serve_lambda,
    worker_env,
)
from cm_datacopy_tests.aws.fake_lambda import FakeLambda
from cm_datacopy_tests.aws.step import chunk_state, fast_again, key, run_step, slow_chunk
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV


@contextlib.contextmanager
def fake_lambda(
    planned: Planned, monkeypatch: pytest.MonkeyPatch, timeout: float = 120, **function: Any
) -> Iterator[FakeLambda]:
    environment = function.pop("environment", None) or worker_env(planned)
    with serve_lambda(monkeypatch, environment, timeout, **function) as server:
        yield server


def assert_copied(planned: Planned) -> None:
    check = verify_table(planned.cfg, planned.run_id, planned.table_key)
    assert check.ok and check.chunks_open == 0, check.mismatches
    assert check.source_rows == check.target_rows == EVENTS_ROWS == planned.target_count()


def test_chunks_copy_through_lambda_in_one_step(plan_source, moto_url, monkeypatch):
    """Three chunks in flight in one Dagster step; the worker reads its secret from Secrets Manager."""
    planned = plan_source(**lambda_compute())
    boto3.client("secretsmanager").create_secret(
        Name="cm-datacopy/worker", SecretString=json.dumps({SNOWFLAKE_PASSWORD_ENV: os.environ[SNOWFLAKE_PASSWORD_ENV]})
    )
    env = {"CM_DATACOPY_CONFIG": str(planned.config), "CM_DATACOPY_SECRETS": "cm-datacopy/worker"}
    with fake_lambda(planned, monkeypatch, environment=env) as server:
        dispatcher = LambdaDispatcher(planned.cfg.compute.lambda_)
        calls = record_calls(dispatcher.lambda_client, dispatcher.s3_client)
        step = run_step(planned, dispatcher, in_flight=3)
    assert step.run.success, step.failure
    assert calls == ["lambda:InvokeFunction"] * 3 and set(calls) <= allowed_actions("dagster-lambda-dispatch.json")
    assert [r.outcome for r in step.results.values()] == ["copied"] * 3
    assert sum(r.rows for r in step.results.values()) == EVENTS_ROWS
    for index, result in step.results.items():
        assert step.materialized[key(index)]["rows"] == result.rows > 0
        assert result.verified and result.attempt == 1
        assert result.task.fence == 0  # the attempts count when it was dispatched
    assert len(server.invocations) == 3 and all(i.status == "ok" for i in server.invocations)
    starts = sorted(i.started for i in server.invocations)
    assert starts[-1] < min(i.started for i in server.invocations) + 5  # dispatched together, not one by one
    assert any("copying chunk copy.events#00001" in line for line in step.log)  # the worker's Pipes log
    assert_copied(planned)


def test_a_request_sent_again_reports_the_ledgers_figures(plan_source, monkeypatch):
    """The dispatcher's request sent once more after its chunk committed: nothing is copied again."""
    planned = plan_source(**lambda_compute())
    with fake_lambda(planned, monkeypatch) as server:
        step = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[1])
        assert step.run.success, step.failure
        event = server.invocations[0].event
        response = boto3.client("lambda", endpoint_url=server.url).invoke(
            FunctionName=FUNCTION, Payload=json.dumps(event)
        )
        again = json.loads(response["Payload"].read())
    assert again["outcome"] == "already_done" and again["rows"] == step.results[1].rows  # the ledger's figures
    assert chunk_state(planned, 1)["attempts"] == 1


def test_two_concurrent_deliveries_claim_one_attempt(plan_source, monkeypatch):
    """The same request twice while the first still copies (what botocore's retries would do): the attempt
    fence (the chunk's attempts when the request was made) lets only the first claim the chunk."""
    planned = plan_source(**lambda_compute())
    request = {
        "task": {
            "source": "analytics",
            "run_id": planned.run_id,
            "table_key": planned.table_key,
            "chunk_index": 2,
            "fence": 0,
        },
        "config_fingerprint": planned.cfg.fingerprint(),
    }
    slow_chunk(planned, 2, 3)
    with fake_lambda(planned, monkeypatch) as server:
        client = boto3.client("lambda", endpoint_url=server.url)
        answers: list[dict[str, Any]] = []

        def invoke() -> None:
            answers.append(
                json.loads(client.invoke(FunctionName=FUNCTION, Payload=json.dumps(request))["Payload"].read())
            )

        first = threading.Thread(target=invoke)
        first.start()
        time.sleep(1.5)  # the first delivery is inside its COPY (held 3 s by the trigger)
        invoke()
        first.join(60)
    assert sorted(a["outcome"] for a in answers) == ["copied", "superseded"]
    assert chunk_state(planned, 2)["attempts"] == 1  # the second delivery never claimed an attempt
    assert planned.target_count() == next(a["rows"] for a in answers if a["outcome"] == "copied")


def test_deadline_rolls_the_chunk_back_and_reports_it(plan_source, monkeypatch):
    """Deadline = remaining time - margin: a chunk past it rolls back and says so through Pipes (no timeout)."""
    planned = plan_source(**lambda_compute(timeout=14, margin=8))  # deadline 6 s after the start
    slow_chunk(planned, 0, 8)
    with fake_lambda(planned, monkeypatch, timeout=14) as server:
        step = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[0])
    result = step.results[0]
    assert not step.run.success and result.outcome == "failed" and result.retryable
    assert "would not finish before its deadline" in result.error
    assert server.invocations[0].status == "ok"  # the function returned in time: no Sandbox.Timedout
    assert planned.target_count() == 0
    state = chunk_state(planned, 0)
    assert state["status"] == "failed" and state["error_retryable"] is True
    fast_again(planned)
    with fake_lambda(planned, monkeypatch, timeout=14):
        retry = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[0])
    assert retry.run.success and retry.results[0].outcome == "copied" and retry.results[0].attempt == 2


def test_timeout_is_a_retryable_failure(plan_source, monkeypatch):
    """A statement that outlives the function: Lambda ends the environment; nothing commits; sent once."""
    planned = plan_source(**lambda_compute(timeout=4, margin=1))
    slow_chunk(planned, 1, 30)
    with fake_lambda(planned, monkeypatch, timeout=4) as server:
        step = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[1])
    result = step.results[1]
    assert result.outcome == "failed" and result.retryable
    assert "the function timed out (timeout_seconds 4)" in result.error
    assert [i.status for i in server.invocations] == ["timeout"]
    assert planned.target_count() == 0
    assert "chunk copy.events#00001" in step.failure


def test_function_errors_are_retryable_failures(plan_source, monkeypatch):
    """The handler cannot load (a wrong handler name in the image), or its process dies (out of memory)."""
    planned = plan_source(**lambda_compute())
    with fake_lambda(planned, monkeypatch, handler="cm_datacopy.workers.lambda_handler.no_such_handler"):
        broken = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[0])
    assert broken.results[0].retryable and "AttributeError" in broken.results[0].error
    slow_chunk(planned, 1, 30)
    with fake_lambda(planned, monkeypatch) as server:
        dispatcher = LambdaDispatcher(planned.cfg.compute.lambda_)
        killer = threading.Thread(target=_kill_when_copying, args=(server,))
        killer.start()
        died = run_step(planned, dispatcher, indexes=[1])
        killer.join()
    assert died.results[1].retryable and "Runtime.ExitError" in died.results[1].error
    assert not died.run.success and planned.target_count() == 0


def _kill_when_copying(server: FakeLambda, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not server.invocations or not server.invocations[-1].pid:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2)  # well inside the chunk's 30 s COPY
    os.kill(server.invocations[-1].pid, signal.SIGKILL)


def test_reports_after_4kb_of_later_logs_are_lost_in_the_log_tail(plan_source, monkeypatch):
    """The invoke returns the last 4 KB of the log: an extension logging after the handler pushes the report
    out. The chunk committed, but Dagster cannot know: a retryable failure, and the retry reports the ledger's
    figures."""
    planned = plan_source(**lambda_compute())
    with fake_lambda(planned, monkeypatch, extension_log_bytes=5000) as server:
        lost = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[1])
    assert server.invocations[0].status == "ok" and "cm_datacopy.chunk_result" in server.invocations[0].log
    result = lost.results[1]
    assert result.outcome == "failed" and result.retryable and "messages_bucket" in result.error
    assert chunk_state(planned, 1)["status"] == "done"
    with fake_lambda(planned, monkeypatch):
        again = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[1])
    assert again.results[1].outcome == "already_done"
    assert again.materialized[key(1)]["rows"] == chunk_state(planned, 1)["rows_copied"] > 0


def test_s3_messages_survive_later_logs(plan_source, moto_url, monkeypatch):
    planned = plan_source(**lambda_compute(messages_bucket=BUCKET))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    with fake_lambda(planned, monkeypatch, extension_log_bytes=5000):
        dispatcher = LambdaDispatcher(planned.cfg.compute.lambda_)
        calls = record_calls(dispatcher.lambda_client, dispatcher.s3_client)
        step = run_step(planned, dispatcher)
    assert step.run.success, step.failure
    assert set(calls) == {"lambda:InvokeFunction", "s3:GetObject"} <= allowed_actions("dagster-lambda-dispatch.json")
    assert {r.outcome for r in step.results.values()} == {"copied"}
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] >= 3  # the messages (they need a lifecycle rule)
    assert_copied(planned)


def test_a_warm_environment_serves_two_invocations(plan_source, monkeypatch):
    """One process, two chunks one after the other: each invocation opens its own Pipes context."""
    planned = plan_source(**lambda_compute())
    with fake_lambda(planned, monkeypatch, warm=True) as server:
        step = run_step(planned, LambdaDispatcher(planned.cfg.compute.lambda_), indexes=[0, 1], in_flight=1)
    assert step.run.success, step.failure
    assert [step.results[i].outcome for i in (0, 1)] == ["copied", "copied"]
    assert len({i.pid for i in server.invocations}) == 1 and len(server.invocations) == 2
