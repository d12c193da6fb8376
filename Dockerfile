# syntax=docker/dockerfile:1
# The chunk worker image, for AWS Lambda and ECS alike (docs/deploy-lambda.md, docs/deploy-ecs.md).
# It holds the core package only (no extras: no Dagster), installed into the Lambda task root.
#
#   docker build -t cm-datacopy-worker .
#   Lambda: create the function from the image; the command is the handler below.
#   ECS:    the dispatcher runs `python3 -m cm_datacopy.workers.ecs` in it (a command override).
#
# The config file is not part of this image: add it in a derived image
# (FROM cm-datacopy-worker + COPY cm_datacopy.yaml /var/task/cm_datacopy.yaml) or point
# CM_DATACOPY_CONFIG at another path.
ARG BASE_IMAGE=public.ecr.aws/lambda/python:3.12

FROM ${BASE_IMAGE} AS build
WORKDIR /build
COPY pyproject.toml README.md ./
COPY cm_datacopy/ ./cm_datacopy/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --target "${LAMBDA_TASK_ROOT}" /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && cd / && python3 -c "import sys; sys.path.insert(0, '${LAMBDA_TASK_ROOT}'); import cm_datacopy.workers.lambda_handler, cm_datacopy.workers.ecs; assert not [m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_aws')]"
COPY docker/entrypoint.sh /usr/local/bin/cm-datacopy-entrypoint
ENV PYTHONPATH=${LAMBDA_TASK_ROOT} \
    PYTHONUNBUFFERED=1 \
    CM_DATACOPY_CONFIG=${LAMBDA_TASK_ROOT}/cm_datacopy.yaml
ENTRYPOINT ["/usr/local/bin/cm-datacopy-entrypoint"]
CMD ["cm_datacopy.workers.lambda_handler.handler"]
