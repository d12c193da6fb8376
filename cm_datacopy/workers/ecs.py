"""The ECS task's entry point: ``python -m cm_datacopy.workers.ecs``.

The request is JSON in ``CM_DATACOPY_CHUNK`` (the dispatcher's container override, beside the Pipes
variables) or the ``--request`` argument. Its ``time_limit_seconds`` counts from the process's start.
ECS stops a task with SIGTERM (then SIGKILL after the container's ``stopTimeout``): the chunk rolls back
at once and its failure is reported.

Exit status: 0 once a result was reported through Pipes, whatever its outcome — ``PipesECSClient``
turns a non-zero exit into an error without the reason, so the structured result carries it instead;
outside Pipes, 0 only if the chunk is done; 2 for a request it cannot read; 1 if reporting failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from dagster_pipes import PipesEnvVarParamsLoader

from cm_datacopy.chunk import ChunkResult
from cm_datacopy.workers.job import ChunkJob
from cm_datacopy.workers.protocol import REQUEST_ENV, BadRequest, ChunkRequest


def read_request(argv: list[str] | None) -> ChunkRequest:
    parser = argparse.ArgumentParser(prog="python -m cm_datacopy.workers.ecs", description="copy one chunk")
    parser.add_argument("--request", help=f"the chunk request as JSON (default: ${REQUEST_ENV})")
    args = parser.parse_args(argv)
    raw = args.request or os.environ.get(REQUEST_ENV)
    if not raw:
        raise BadRequest(f"no chunk request: set {REQUEST_ENV} or pass --request")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the chunk request is not JSON: {exc}") from None
    return ChunkRequest.from_json(data)


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    try:
        request = read_request(argv)
    except BadRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if request.time_limit_seconds is not None:
        request = request.with_time_left(started, request.time_limit_seconds)
    job = ChunkJob(request)
    loader = PipesEnvVarParamsLoader()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = job.run(loader)
        except BaseException as exc:  # reported below; the main thread decides the exit status
            outcome["error"] = exc

    # The chunk runs in a thread so that the main thread, waiting, handles SIGTERM at once.
    signal.signal(signal.SIGTERM, lambda signum, frame: job.stop())
    thread = threading.Thread(target=work, name="chunk", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        error = outcome["error"]
        print(f"error: reporting the chunk failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    result: ChunkResult = outcome["result"]
    print(json.dumps({"chunk": request.task.name, "outcome": result.outcome, "rows": result.rows}), flush=True)
    return 0 if loader.is_dagster_pipes_process() or result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
