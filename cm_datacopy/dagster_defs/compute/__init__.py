"""Dispatchers that run a step's chunks on AWS through Dagster Pipes: ``lambda_.LambdaDispatcher`` and
``ecs.EcsDispatcher`` (``pipes.PipesDispatcher`` holds what they share). Each implements
``dagster_defs.dispatch.ChunkDispatcher``; the worker side is ``cm_datacopy.workers``.
"""
