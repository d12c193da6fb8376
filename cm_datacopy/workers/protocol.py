"""What the Dagster side and the workers agree on: the chunk request and the report's names.

A ``ChunkRequest`` is the chunk task plus what the worker needs to check and report it. It travels as
the Lambda event (beside the Pipes parameters ``PipesLambdaClient`` merges in) or, for ECS, as JSON in
the container's environment (``REQUEST_ENV``, beside the ``DAGSTER_PIPES_*`` variables).

The worker reports through Pipes, per chunk: the materialization (the chunk's figures) and the checksum
check when the request names an asset, then always the ``ChunkResult`` as a custom message
(``RESULT_MESSAGE``) — the one report the Dagster side cannot do without.

Why a ranged step cannot use Pipes' own partition: in a run over a range of partitions Pipes sends
the remote ``partition_key=None``; the chunk's identity is the request's task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cm_datacopy.chunk import ChunkResult, ChunkTask
from cm_datacopy.errors import ConfigError

REQUEST_ENV = "CM_DATACOPY_CHUNK"
RESULT_MESSAGE = "cm_datacopy.chunk_result"
CHECK_NAME = "chunk_checksums_match"
DEFAULT_DEADLINE_MARGIN_SECONDS = 30.0


class BadRequest(ConfigError):
    """A request the worker cannot read; a dispatcher never sends one (a request made by hand may be)."""


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk for a worker.

    ``config_fingerprint``: the Dagster side's ``SourceConfig.fingerprint()``; a worker whose config file
    differs (an image built from another config) refuses the chunk instead of copying other rows. A
    request made by hand may leave it out.
    ``asset_key``: the asset to report the materialization and check for (Pipes' user string, ``a/b/c``);
    None for a step that is not an asset (the ChunkResult is reported all the same).
    ``time_limit_seconds``: how long the worker may run (ECS); a Lambda worker takes its invocation's
    remaining time instead. The chunk's deadline is the limit minus ``deadline_margin_seconds``.
    """

    task: ChunkTask
    config_fingerprint: str | None = None
    asset_key: str | None = None
    deadline_margin_seconds: float = DEFAULT_DEADLINE_MARGIN_SECONDS
    time_limit_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "task": self.task.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> ChunkRequest:
        if not isinstance(data, dict):
            raise BadRequest(f"a chunk request is a JSON object, not {type(data).__name__}")
        task = data.get("task")
        if not isinstance(task, dict) or not {"source", "run_id", "table_key", "chunk_index"} <= set(task):
            raise BadRequest("a chunk request needs 'task' with source, run_id, table_key and chunk_index")
        if not isinstance(task["chunk_index"], int) or isinstance(task["chunk_index"], bool):
            raise BadRequest(f"the task's chunk_index must be an integer, not {task['chunk_index']!r}")
        fingerprint = data.get("config_fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise BadRequest("a chunk request's 'config_fingerprint' is text (the Dagster side's config fingerprint)")
        limit = data.get("time_limit_seconds")
        try:
            return cls(
                task=ChunkTask.from_json(task),
                config_fingerprint=fingerprint,
                asset_key=data.get("asset_key"),
                deadline_margin_seconds=float(data.get("deadline_margin_seconds", DEFAULT_DEADLINE_MARGIN_SECONDS)),
                time_limit_seconds=None if limit is None else float(limit),
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"a chunk request holds a value of the wrong type: {exc}") from None

    def with_time_left(self, started: float, seconds: float) -> ChunkRequest:
        """The request whose task must end ``deadline_margin_seconds`` before ``started + seconds`` (epoch s),
        or earlier if its task already had an earlier deadline."""
        deadline = started + max(0.0, seconds - self.deadline_margin_seconds)
        if self.task.deadline is not None:
            deadline = min(deadline, self.task.deadline)
        return dataclasses.replace(self, task=dataclasses.replace(self.task, deadline=deadline))


def materialization_metadata(result: ChunkResult) -> dict[str, dict[str, Any]]:
    """The chunk's figures as Pipes metadata (checksums as text: they can pass 2**63)."""

    def value(raw: Any, kind: str) -> dict[str, Any]:
        return {"raw_value": raw, "type": "null" if raw is None else kind}

    text = result.to_json()
    return {
        "rows": value(result.rows, "int"),
        "bytes": value(result.bytes, "int"),
        "seconds": value(round(result.seconds, 3), "float"),
        "outcome": value(result.outcome, "text"),
        "attempt": value(result.attempt, "int"),
        "migration_run_id": value(result.task.run_id, "text"),
        "chunk_index": value(result.task.chunk_index, "int"),
        "source_checksum": value(text["source_checksum"], "text"),
        "target_checksum": value(text["target_checksum"], "text"),
    }
