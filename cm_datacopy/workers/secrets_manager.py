"""Secrets for a worker on AWS, into the environment variables the config names.

The config file names environment variables (``password_env`` …), never values. On ECS the task
definition's ``secrets`` fills them from Secrets Manager by itself. Lambda has no such field, so a worker
reads one Secrets Manager secret named by ``CM_DATACOPY_SECRETS`` (its name or ARN): a JSON object of
variable names and values, e.g. ``{"SNOWFLAKE_PASSWORD": "…", "PG_PASSWORD": "…"}``, exported before the
config is read. It is read on every invocation, so a rotated secret is used at once.
"""

from __future__ import annotations

import json
import os
import re

from cm_datacopy.errors import ConfigError, ConnectionCheckError

SECRETS_ENV = "CM_DATACOPY_SECRETS"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def export_secrets() -> list[str]:
    """Set the variables held by the ``CM_DATACOPY_SECRETS`` secret; returns their names (none if unset)."""
    secret_id = os.environ.get(SECRETS_ENV)
    if not secret_id:
        return []
    import boto3
    import botocore.exceptions

    try:
        text = boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "InternalServiceError"):
            raise ConnectionCheckError(f"{SECRETS_ENV}: Secrets Manager did not answer ({code}); retry") from None
        raise ConfigError(
            f"{SECRETS_ENV}: cannot read secret {secret_id!r} ({code}): check its name and that the worker's role "
            "may call secretsmanager:GetSecretValue on it"
        ) from None
    except (botocore.exceptions.BotoCoreError, KeyError) as exc:
        raise ConnectionCheckError(f"{SECRETS_ENV}: cannot reach Secrets Manager: {type(exc).__name__}") from None
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in values.items()
    ):
        raise ConfigError(
            f"{SECRETS_ENV}: secret {secret_id!r} must hold a JSON object of environment variable names and "
            'string values, e.g. {"SNOWFLAKE_PASSWORD": "..."}'
        )
    os.environ.update(values)
    return sorted(values)
