"""One chunk on a worker: read the config, copy the chunk, report it to Dagster through Pipes.

Shared by the Lambda handler and the ECS entry point. The order matters for the reports' delivery:
the chunk's connections are closed before the report is written, and nothing is written after the
Pipes context closes (with Lambda's log-tail reader, later output pushes the report out of the 4 KB
tail the invoke returns).

A warm Lambda runs many invocations in one process, but ``open_dagster_pipes`` returns a process-wide
context once one exists, and a closed one refuses every message: each job opens its own ``PipesContext``
(and makes it the current one) instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from dagster_pipes import (
    PipesContext,
    PipesDefaultContextLoader,
    PipesDefaultMessageWriter,
    PipesMessageWriter,
    PipesParamsLoader,
    PipesS3MessageWriter,
)

from cm_datacopy.chunk import ChunkResult, Worker, copy_chunk
from cm_datacopy.chunk.task import worker_name
from cm_datacopy.config import load_config
from cm_datacopy.errors import ConfigError, DatacopyError
from cm_datacopy.redact import redact
from cm_datacopy.workers.protocol import CHECK_NAME, RESULT_MESSAGE, ChunkRequest, materialization_metadata
from cm_datacopy.workers.secrets_manager import export_secrets

_s3_lock = threading.Lock()
_s3_client: Any = None


def _s3() -> Any:
    """One S3 client per process (a warm Lambda keeps it)."""
    global _s3_client
    with _s3_lock:
        if _s3_client is None:
            import boto3

            _s3_client = boto3.client("s3")
        return _s3_client


def message_writer(messages_params: Mapping[str, Any]) -> PipesMessageWriter:
    """The writer the Dagster side's reader expects, as its parameters say: a bucket (S3 reader), else the
    default writer (standard error for Lambda's log tail, standard output for ECS's CloudWatch reader)."""
    if "bucket" in messages_params:
        return PipesS3MessageWriter(client=_s3(), interval=5)
    return PipesDefaultMessageWriter()


class ChunkJob:
    """Copy one requested chunk; ``stop()`` (from another thread or a signal handler) rolls it back."""

    def __init__(self, request: ChunkRequest) -> None:
        self.request = request
        self._stop = threading.Event()
        self._worker: Worker | None = None

    def stop(self) -> None:
        self._stop.set()
        worker = self._worker
        if worker is not None:
            worker.interrupt()

    def copy(self) -> ChunkResult:
        """The chunk's result; never raises for a failed chunk (nor for a config the worker cannot use)."""
        task = self.request.task
        started = time.monotonic()
        try:
            export_secrets()
            cfg = load_config().source(task.source)
            expected = self.request.config_fingerprint
            if expected is not None and cfg.fingerprint() != expected:
                raise ConfigError(
                    f"the worker's config for source {task.source!r} differs from the Dagster side's (fingerprint "
                    f"{cfg.fingerprint()}, expected {expected}): deploy the same config file "
                    "to the worker"
                )
        except DatacopyError as exc:
            return ChunkResult(
                task,
                "failed",
                seconds=time.monotonic() - started,
                error=redact(str(exc)),
                retryable=exc.retryable,
                worker=worker_name(),
            )
        with Worker(cfg, query_tag=f"cm_datacopy source={cfg.name} run={task.run_id} chunk={task.name}") as worker:
            self._worker = worker
            try:
                return copy_chunk(cfg, task, worker=worker, stop=self._stop)
            finally:
                self._worker = None

    def run(self, params_loader: PipesParamsLoader) -> ChunkResult:
        """Copy the chunk and, in a Pipes process, report it; outside Pipes (a request sent by hand) only copy."""
        if not params_loader.is_dagster_pipes_process():
            return self.copy()
        writer = message_writer(params_loader.load_messages_params())
        pipes = PipesContext(params_loader, PipesDefaultContextLoader(), writer)
        PipesContext.set(pipes)
        with pipes:
            pipes.log.info(f"copying chunk {self.request.task.name} of migration run {self.request.task.run_id}")
            result = self.copy()
            report(pipes, self.request, result)
        return result


def report(pipes: PipesContext, request: ChunkRequest, result: ChunkResult) -> None:
    if result.ok and request.asset_key:
        metadata = materialization_metadata(result)
        pipes.report_asset_materialization(metadata=metadata, asset_key=request.asset_key)
        pipes.report_asset_check(
            CHECK_NAME,
            passed=result.verified,
            metadata={k: metadata[k] for k in ("source_checksum", "target_checksum")},
            asset_key=request.asset_key,
        )
    elif not result.ok:
        kind = "retryable" if result.retryable else "final"
        pipes.log.error(f"chunk {result.task.name}: {result.outcome} ({kind}): {result.error}")
    pipes.report_custom_message({"kind": RESULT_MESSAGE, "result": result.to_json()})
