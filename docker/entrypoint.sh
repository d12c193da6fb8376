#!/bin/sh
# One image, two runtimes.
#  Lambda: the service sets AWS_LAMBDA_RUNTIME_API; hand over to the base image's entry point, which
#          runs the handler named by the command (CMD). `docker run IMAGE <module.handler>` does the same
#          locally (the base image then starts its runtime interface emulator).
#  ECS:    anything else is run as given, e.g. the dispatcher's `python3 -m cm_datacopy.workers.ecs`.
#          (RunTask can override a container's command but not its entry point: hence this script.)
set -eu
LAMBDA_ENTRYPOINT="${CM_DATACOPY_LAMBDA_ENTRYPOINT:-/lambda-entrypoint.sh}"
if [ -n "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec "$LAMBDA_ENTRYPOINT" "$@"
fi
if [ "$#" -eq 1 ]; then
    case "$1" in
        *.handler) exec "$LAMBDA_ENTRYPOINT" "$@" ;;
    esac
fi
if [ "$#" -eq 0 ]; then
    echo "cm-datacopy-entrypoint: no command (ECS runs: python3 -m cm_datacopy.workers.ecs)" >&2
    exit 64
fi
exec "$@"
