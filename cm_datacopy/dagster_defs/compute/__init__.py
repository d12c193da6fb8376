"""Dispatchers that run a step's chunks on AWS through Dagster Pipes: ``lambda_.LambdaDispatcher`` and
``ecs.EcsDispatcher`` (``pipes.PipesDispatcher`` holds what they share). Each implements
``dagster_defs.dispatch.ChunkDispatcher``; the worker side is ``cm_datacopy.workers``.
"""

try:
    import dagster_aws  # noqa: F401
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        "running chunks on Lambda or ECS needs the dagster extra (dagster-aws): pip install 'cm_datacopy[dagster]'",
        name=exc.name,
    ) from None
