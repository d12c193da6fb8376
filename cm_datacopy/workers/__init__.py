"""Chunk workers on AWS: the Lambda handler (``lambda_handler.handler``) and the ECS task's entry point
(``python -m cm_datacopy.workers.ecs``). Both copy one chunk with ``copy_chunk`` and report it to Dagster
through Pipes.

No Dagster here: the worker image installs the core package (``dagster-pipes`` and boto3, no extras).
"""
