"""The unit of work: copy one chunk (``copy_chunk``), and the task contract that carries it to a
thread, a Lambda invocation or an ECS task (``ChunkTask`` in, ``ChunkResult`` out). No Dagster here."""

from cm_datacopy.chunk.copy import copy_chunk
from cm_datacopy.chunk.task import ChunkResult, ChunkTask
from cm_datacopy.chunk.worker import Worker

__all__ = ["ChunkResult", "ChunkTask", "Worker", "copy_chunk"]
