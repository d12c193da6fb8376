"""The AWS Lambda handler: ``cm_datacopy.workers.lambda_handler.handler`` (the worker image's command).

The event is a ``ChunkRequest`` (``protocol.py``) into which ``PipesLambdaClient`` merged the Pipes
parameters. The chunk's deadline is the invocation's remaining time minus ``deadline_margin_seconds``:
the chunk rolls back by itself and reports a retryable failure rather than being killed at the timeout
(whose buffered report would be lost). Config: ``CM_DATACOPY_CONFIG`` (default ``./cm_datacopy.yaml``,
i.e. ``/var/task`` in the image); secrets: ``secrets_manager.py``.

Returns the ``ChunkResult`` as JSON (Pipes ignores it; an invocation by hand shows it).
"""

from __future__ import annotations

import time
from typing import Any

from dagster_pipes import PipesMappingParamsLoader

from cm_datacopy.workers.job import ChunkJob
from cm_datacopy.workers.protocol import ChunkRequest


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    started = time.time()
    request = ChunkRequest.from_json(event).with_time_left(started, context.get_remaining_time_in_millis() / 1000)
    return ChunkJob(request).run(PipesMappingParamsLoader(event)).to_json()
