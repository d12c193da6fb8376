"""Where a Dagster step runs its chunks: the seam between the Dagster layer and the compute.

A dispatcher takes the chunk tasks of one step and yields each ``ChunkResult`` as its chunk ends,
with at most ``in_flight`` chunks running at once. Every dispatcher ends in the same
``copy_chunk``: in this process (threads), in an AWS Lambda invocation, or in an ECS task. The
step turns each result into that chunk's materialization and check evaluation, so what Dagster
shows does not depend on where the chunk ran.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from cm_datacopy.chunk import ChunkResult, ChunkTask
from cm_datacopy.config import SourceConfig


class ChunkDispatcher(Protocol):
    def run(self, context: Any, cfg: SourceConfig, tasks: Sequence[ChunkTask], in_flight: int) -> Iterator[ChunkResult]:
        """Run ``tasks``; yield each result as it ends (in any order). Never raises for a failed chunk:
        a failure is a result with ``outcome == "failed"`` and its ``retryable`` flag."""
        ...


def dispatcher_for(cfg: SourceConfig) -> ChunkDispatcher:
    """The dispatcher of a source's ``compute.kind``."""
    raise NotImplementedError(f"no dispatcher for compute kind {cfg.compute.kind!r} yet")
