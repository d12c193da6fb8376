"""Chunks on ECS: the real dispatcher and boto3 clients against a moto server, whose tasks an agent runs
for real (``ecs_agent.py``: the container's command through the image's entry point, output into
CloudWatch Logs, the real exit code); real copies from the Snowflake stand-in into PostgreSQL."""

from __future__ import annotations

import json
import signal
import threading
import time

import boto3

from cm_datacopy.dagster_defs.compute.ecs import EcsDispatcher
from cm_datacopy.run.verify import verify_table
from cm_datacopy_tests.aws.conftest import (
    BUCKET,
    CLUSTER,
    EVENTS_ROWS,
    LOG_GROUP,
    Planned,
    allowed_actions,
    ecs_compute,
    record_calls,
    register_worker,
)
from cm_datacopy_tests.aws.step import chunk_state, key, run_step, slow_chunk


def assert_copied(planned: Planned) -> None:
    check = verify_table(planned.cfg, planned.run_id, planned.table_key)
    assert check.ok and check.chunks_open == 0, check.mismatches
    assert check.source_rows == check.target_rows == EVENTS_ROWS == planned.target_count()


def test_chunks_copy_through_ecs_in_one_step(plan_source, ecs, agent):
    planned = plan_source(**ecs_compute(ecs))
    register_worker(planned.config)
    dispatcher = EcsDispatcher(planned.cfg.compute.ecs)
    calls = record_calls(dispatcher.ecs_client, dispatcher.logs_client)
    step = run_step(planned, dispatcher, in_flight=3)
    assert step.run.success, step.failure
    assert {"ecs:RunTask", "ecs:DescribeTasks", "logs:GetLogEvents"} <= set(calls)
    assert set(calls) <= allowed_actions("dagster-ecs-dispatch.json")
    assert [r.outcome for r in step.results.values()] == ["copied"] * 3
    for index, result in step.results.items():
        assert step.materialized[key(index)]["rows"] == result.rows > 0 and result.verified
    assert_copied(planned)
    # Each chunk really ran in its own container: our module, the request in its environment, exit 0, and
    # the Pipes messages in its awslogs stream.
    assert len(agent.runs) == 3
    ecs_client, logs = boto3.client("ecs"), boto3.client("logs")
    for arn, run in agent.runs.items():
        assert run.command == ["python3", "-m", "cm_datacopy.workers.ecs"] and run.exit_code == 0
        request = json.loads(run.env["CM_DATACOPY_CHUNK"])
        assert request["time_limit_seconds"] == 120 and "DAGSTER_PIPES_CONTEXT" in run.env
        (task,) = ecs_client.describe_tasks(cluster=CLUSTER, tasks=[arn])["tasks"]
        assert task["lastStatus"] == "STOPPED" and task["containers"][0]["exitCode"] == 0
        events = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=run.log_stream)["events"]
        text = "\n".join(e["message"] for e in events)
        assert "cm_datacopy.chunk_result" in text and "__dagster_pipes_version" in text
    assert any("ran in ECS task https://" in line for line in step.log)
    # No log-forwarding thread keeps polling CloudWatch after the step (dagster-aws starts one per container).
    assert not [t for t in threading.enumerate() if t.name.endswith("(_start)")]


def test_s3_messages(plan_source, ecs, agent):
    planned = plan_source(**ecs_compute(ecs, messages_bucket=BUCKET))
    register_worker(planned.config)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    dispatcher = EcsDispatcher(planned.cfg.compute.ecs)
    calls = record_calls(dispatcher.ecs_client, dispatcher.logs_client, dispatcher.s3_client)
    step = run_step(planned, dispatcher, indexes=[0, 1])
    assert step.run.success, step.failure
    assert "s3:GetObject" in calls and set(calls) <= allowed_actions("dagster-ecs-dispatch.json")
    assert boto3.client("s3").list_objects_v2(Bucket=BUCKET)["KeyCount"] >= 2
    assert [step.results[i].outcome for i in (0, 1)] == ["copied", "copied"]


def test_a_crashed_container_fails_its_chunk_with_the_exit_code(plan_source, ecs, agent):
    planned = plan_source(**ecs_compute(ecs))
    register_worker(planned.config)
    slow_chunk(planned, 1, 30)

    def kill_when_running() -> None:
        deadline = time.monotonic() + 60
        while not any(r.proc for r in agent.runs.values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(3)  # inside the chunk's 30 s COPY
        next(r for r in agent.runs.values() if r.proc).proc.send_signal(signal.SIGKILL)  # as the OOM killer

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    step = run_step(planned, EcsDispatcher(planned.cfg.compute.ecs), indexes=[1])
    killer.join()
    result = step.results[1]
    assert result.outcome == "failed" and result.retryable
    assert "exit code 137" in result.error and "non-zero exit code" in result.error
    assert planned.target_count() == 0


def test_a_task_stopped_by_ecs_rolls_back_and_reports(plan_source, ecs, agent):
    """A chunk stuck in a statement past start_timeout + timeout: the dispatcher stops its task; the worker
    gets SIGTERM, cancels its statement, rolls back, records the failure and exits."""
    planned = plan_source(**ecs_compute(ecs, timeout=12, margin=4, start_timeout_seconds=10))
    register_worker(planned.config)
    slow_chunk(planned, 2, 120)
    started = time.monotonic()
    step = run_step(planned, EcsDispatcher(planned.cfg.compute.ecs), indexes=[2])
    result = step.results[2]
    assert result.outcome == "failed" and result.retryable
    assert "did not end within start_timeout_seconds + timeout_seconds (22 s); its task was stopped" in result.error
    agent.wait_stopped()
    assert time.monotonic() - started < 60  # SIGTERM cancelled the 120 s statement
    (run,) = agent.runs.values()
    assert run.stop_requested and run.exit_code == 0  # it reported, then exited 0
    state = chunk_state(planned, 2)
    assert state["status"] == "failed" and "stopped on request" in state["last_error"]
    assert planned.target_count() == 0


def test_run_task_failures_are_named(plan_source, ecs, agent, monkeypatch):
    """RunTask answers without a task (capacity, placement): dagster-aws would raise IndexError."""
    from moto.core.responses import ActionResult
    from moto.ecs.responses import EC2ContainerServiceResponse

    planned = plan_source(**ecs_compute(ecs))
    register_worker(planned.config)
    failures = [{"arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x", "reason": "RESOURCE:MEMORY"}]
    monkeypatch.setattr(
        EC2ContainerServiceResponse, "run_task", lambda self: ActionResult({"tasks": [], "failures": failures})
    )
    capacity = run_step(planned, EcsDispatcher(planned.cfg.compute.ecs), indexes=[0]).results[0]
    assert (
        capacity.retryable and "ECS RunTask started no task" in capacity.error and "RESOURCE:MEMORY" in capacity.error
    )
    failures[0] = {"arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/x", "reason": "MISSING"}
    missing = run_step(planned, EcsDispatcher(planned.cfg.compute.ecs), indexes=[0]).results[0]
    assert missing.retryable is False and "MISSING" in missing.error
    assert not agent.runs


def test_a_task_that_fails_to_start(plan_source, ecs, agent):
    planned = plan_source(**ecs_compute(ecs))
    register_worker(planned.config)
    agent.fail_to_start_next = "CannotPullContainerError: pull access denied for cm-datacopy-worker"
    result = run_step(planned, EcsDispatcher(planned.cfg.compute.ecs), indexes=[0]).results[0]
    assert result.retryable and "ECS task failed to start: CannotPullContainerError" in result.error


def test_plain_moto_runs_nothing_and_the_dispatcher_says_so(plan_source, ecs):
    """Without the agent moto's task walks to STOPPED with exit code 0 and nothing ran: a false green that
    the dispatcher refuses, because no ChunkResult came back."""
    planned = plan_source(**ecs_compute(ecs))
    register_worker(planned.config)
    step = run_step(planned, EcsDispatcher(planned.cfg.compute.ecs), indexes=[0])
    result = step.results[0]
    assert not step.run.success and result.retryable and "no report of chunk copy.events#00000" in result.error
    (arn,) = boto3.client("ecs").list_tasks(cluster=CLUSTER)["taskArns"]
    (task,) = boto3.client("ecs").describe_tasks(cluster=CLUSTER, tasks=[arn])["tasks"]
    assert task["lastStatus"] == "STOPPED" and task["containers"][0]["exitCode"] == 0  # "green"
    assert chunk_state(planned, 0)["attempts"] == 0 and planned.target_count() == 0


def test_tasks_still_running_are_stopped_when_the_step_ends(plan_source, ecs, agent):
    """The step stops consuming results (it failed, or was told to stop): chunks still in flight end."""
    import dagster as dg

    planned = plan_source(**ecs_compute(ecs))
    register_worker(planned.config)
    slow_chunk(planned, 2, 120)
    tasks = {t.chunk_index: t for t in planned.tasks()}
    seen = []

    @dg.asset
    def first_result_only(context):
        results = EcsDispatcher(planned.cfg.compute.ecs).run(context, planned.cfg, [tasks[0], tasks[2]], 2)
        seen.append(next(results))
        results.close()

    started = time.monotonic()
    assert dg.materialize([first_result_only]).success
    assert [(r.task.chunk_index, r.outcome) for r in seen] == [(0, "copied")]
    agent.wait_stopped()
    assert time.monotonic() - started < 90
    slow = next(r for r in agent.runs.values() if json.loads(r.env["CM_DATACOPY_CHUNK"])["task"]["chunk_index"] == 2)
    assert slow.stop_requested
    state = chunk_state(planned, 2)
    assert state["status"] == "failed" and "stopped on request" in state["last_error"] and state["error_retryable"]
