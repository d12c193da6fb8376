"""Source configuration: one YAML file holding every source.

Secrets never live in the file: it names the environment variables that hold them, and the
values are read only when a connection is opened (as ``SecretStr``, so they never print).
Validation is its own step (``cm-datacopy validate``) and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from cm_datacopy.errors import ConfigError
from cm_datacopy.redact import remember

DEFAULT_CONFIG_FILE = "cm_datacopy.yaml"
CONFIG_ENV = "CM_DATACOPY_CONFIG"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EnvName = Annotated[str, Field(description="name of an environment variable", min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (letters, digits, _)")
    return value


def read_secret(env_name: str, what: str) -> SecretStr:
    """The value of a secret's environment variable; an error names the variable, never a value."""
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(f"{what}: environment variable {env_name} is not set; export it before running")
    remember(value)
    return SecretStr(value)


class SnowflakeConfig(_Strict):
    """How to reach the Snowflake account. Exactly one of password or key-pair auth."""

    account: str = Field(min_length=1)
    user: str = Field(min_length=1)
    database: str = Field(min_length=1)
    schema_: str = Field(default="PUBLIC", alias="schema", min_length=1)
    warehouse: str | None = None
    role: str | None = None
    password_env: EnvName | None = None
    private_key_file_env: EnvName | None = Field(
        default=None, description="variable holding the path of a PEM private key file"
    )
    private_key_passphrase_env: EnvName | None = None
    host: str | None = Field(default=None, description="only for private links and the local stand-in")
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["https", "http"] = "https"
    login_timeout_seconds: int = Field(default=30, ge=1)
    query_timeout_seconds: int = Field(
        default=3600,
        ge=1,
        description="longest a single Snowflake statement may run (queue time and warehouse resume count); "
        "the client's cancel and the session's STATEMENT_TIMEOUT_IN_SECONDS",
    )
    time_travel: bool = Field(default=True, description="read every chunk AT the run's start time")

    _names = field_validator("password_env", "private_key_file_env", "private_key_passphrase_env")(
        classmethod(lambda cls, v: _check_env_name(v))
    )

    @model_validator(mode="after")
    def _one_auth(self) -> SnowflakeConfig:
        if bool(self.password_env) == bool(self.private_key_file_env):
            raise ValueError("set exactly one of password_env or private_key_file_env (key-pair auth)")
        if self.private_key_passphrase_env and not self.private_key_file_env:
            raise ValueError("private_key_passphrase_env needs private_key_file_env")
        return self

    def connect_kwargs(self) -> dict[str, Any]:
        """Arguments for ``snowflake.connector.connect``; reads the secrets from the environment now.

        No ``network_timeout``: the connector would cancel every query after it. Session parameters
        and the per-query timeout are set by ``cm_datacopy.snowflake.session``."""
        kwargs: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "database": self.database,
            "schema": self.schema_,
            "login_timeout": self.login_timeout_seconds,
            "application": "cm_datacopy",
            "paramstyle": "qmark",  # server-side binding: identifiers may hold % safely
        }
        for key in ("warehouse", "role", "host", "port"):
            if (value := getattr(self, key)) is not None:
                kwargs[key] = value
        kwargs["protocol"] = self.protocol
        if self.password_env:
            kwargs["password"] = read_secret(self.password_env, "snowflake.password_env").get_secret_value()
        else:
            assert self.private_key_file_env
            key_path = Path(read_secret(self.private_key_file_env, "snowflake.private_key_file_env").get_secret_value())
            if not key_path.is_file():
                raise ConfigError(
                    f"snowflake.private_key_file_env: {self.private_key_file_env} names a file that does not exist"
                )
            kwargs["private_key_file"] = str(key_path)
            if self.private_key_passphrase_env:
                kwargs["private_key_file_pwd"] = read_secret(
                    self.private_key_passphrase_env, "snowflake.private_key_passphrase_env"
                ).get_secret_value()
        return kwargs


class PostgresConfig(_Strict):
    """The target PostgreSQL; the ledger (schema ``migration_status``) lives there too."""

    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password_env: EnvName | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout_seconds: int = Field(default=10, ge=1)
    ledger_schema: str = Field(
        default="migration_status",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="schema of the ledger; another name lets cm_datacopy live beside the old system's tables",
    )

    _names = field_validator("password_env")(classmethod(lambda cls, v: _check_env_name(v)))

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout_seconds,
            "application_name": "cm_datacopy",
            # A worker that dies or freezes must not hold locks for long: the server probes the peer.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if self.password_env:
            kwargs["password"] = read_secret(self.password_env, "postgres.password_env").get_secret_value()
        return kwargs


class TableConfig(_Strict):
    """One table to copy. Names are exact (Snowflake stores unquoted names in upper case)."""

    source: str = Field(min_length=1, description="table name in Snowflake")
    source_schema: str | None = Field(default=None, description="defaults to snowflake.schema")
    target_schema: str = Field(min_length=1)
    target: str | None = Field(default=None, description="target table name; defaults to source, lower-cased")
    chunk_key: str | None = Field(default=None, description="numeric, date or timestamp column; none = one chunk")
    chunk_size: int = Field(default=100_000, ge=1, description="rows per chunk, approximately")
    mode: Literal["publish", "in_place"] = Field(
        default="publish",
        description="publish: load a shadow table, swap it in when every chunk is verified (readers never see "
        "a half-loaded table); in_place: chunks replace their key range in the target directly (for tables too "
        "big to hold twice)",
    )
    publish_min_fraction: float = Field(
        default=0.5, ge=0, le=1, description="refuse a publish whose row count falls below this share of the old"
    )

    @field_validator("source", "source_schema", "target_schema", "target", "chunk_key")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and ("\x00" in value or len(value.encode()) > 255):
            raise ValueError("identifiers must not hold NUL bytes and must be at most 255 bytes")
        return value

    @property
    def target_name(self) -> str:
        return self.target or (self.source.lower() if self.source.isupper() else self.source)

    @property
    def key(self) -> str:
        """The table's name in the ledger and in partition keys."""
        return f"{self.target_schema}.{self.target_name}"


LAMBDA_MAX_SECONDS = 900  # AWS Lambda's limit per invocation


class _RemoteCompute(_Strict):
    """What the Lambda and ECS settings share: the region, the time limit, and where Pipes messages go."""

    region: str = Field(min_length=1)
    messages_bucket: str | None = Field(
        default=None,
        min_length=3,
        description="S3 bucket for the chunks' reports to Dagster (Pipes messages); without it reports travel in "
        "the logs. Give its objects a lifecycle rule: they are never deleted",
    )
    deadline_margin_seconds: int = Field(
        default=30,
        ge=1,
        description="a chunk gives up (rolls back, retryable) this long before its time limit, leaving time to "
        "record the failure and send the report",
    )


class LambdaCompute(_RemoteCompute):
    """Chunks run on AWS Lambda: one synchronous invocation per chunk, through Dagster Pipes."""

    function_name: str = Field(min_length=1)
    timeout_seconds: int = Field(
        default=LAMBDA_MAX_SECONDS,
        ge=1,
        le=LAMBDA_MAX_SECONDS,
        description="the function's configured timeout (AWS allows at most 900 s); the Dagster side waits this "
        "long plus 60 s for an invocation and never sends it twice",
    )

    @model_validator(mode="after")
    def _margin_fits(self) -> LambdaCompute:
        if self.deadline_margin_seconds >= self.timeout_seconds:
            raise ValueError(
                f"deadline_margin_seconds ({self.deadline_margin_seconds}) must be below timeout_seconds "
                f"({self.timeout_seconds})"
            )
        return self


class EcsCompute(_RemoteCompute):
    """Chunks run as AWS ECS tasks: one task per chunk, through Dagster Pipes; its logs through ``awslogs``."""

    cluster: str = Field(min_length=1)
    task_definition: str = Field(min_length=1, description="family, family:revision or ARN of the worker's task")
    container: str = Field(min_length=1, description="the worker's container in the task definition")
    launch_type: Literal["FARGATE", "EC2"] = Field(
        default="FARGATE", description="FARGATE, or EC2 for a cluster of your own instances"
    )
    subnets: list[str] = Field(default_factory=list, description="awsvpc subnets (private ones that reach PostgreSQL)")
    security_groups: list[str] = Field(
        default_factory=list, description="awsvpc security groups: outbound to PostgreSQL, Snowflake and AWS APIs"
    )
    assign_public_ip: bool = Field(default=False, description="only for public subnets without a NAT gateway")
    timeout_seconds: int = Field(
        default=840,
        ge=10,
        description="longest a chunk's task may copy: the worker rolls back before it; the dispatcher stops a task "
        "still running after start_timeout_seconds + timeout_seconds",
    )
    start_timeout_seconds: int = Field(
        default=600, ge=10, description="time for ECS to place the task and pull the image before it runs"
    )
    poll_seconds: int = Field(
        default=6, ge=1, description="how often the dispatcher asks ECS whether a task stopped (DescribeTasks)"
    )

    @model_validator(mode="after")
    def _network_fits(self) -> EcsCompute:
        if self.launch_type == "FARGATE" and not self.subnets:
            raise ValueError("launch_type FARGATE needs subnets (awsvpc networking): list the worker's private subnets")
        if self.deadline_margin_seconds >= self.timeout_seconds:
            raise ValueError(
                f"deadline_margin_seconds ({self.deadline_margin_seconds}) must be below timeout_seconds "
                f"({self.timeout_seconds})"
            )
        return self


class ComputeConfig(_Strict):
    """Where the Dagster layer runs a source's chunks: in the run's process (threads), on Lambda or on ECS.

    ``cm-datacopy run`` always copies in its own process. ``chunk_max_seconds`` sizes the chunks of every
    kind: the planner cuts a table so that, at the rows per second its earlier runs measured, a chunk takes
    at most this long (without history, ``chunk_size`` rows).
    """

    kind: Literal["in_process", "lambda", "ecs"] = "in_process"
    lambda_: LambdaCompute | None = Field(default=None, alias="lambda")
    ecs: EcsCompute | None = None
    chunk_max_seconds: int = Field(
        default=LAMBDA_MAX_SECONDS // 2,
        ge=1,
        description="longest a chunk should take, by the rows per second measured in earlier runs of its table; "
        "default: half of Lambda's 15 minutes",
    )

    @model_validator(mode="after")
    def _settings_for_kind(self) -> ComputeConfig:
        if self.kind == "lambda" and self.lambda_ is None:
            raise ValueError("kind: lambda needs a 'lambda' section (function_name, region)")
        if self.kind == "ecs" and self.ecs is None:
            raise ValueError("kind: ecs needs an 'ecs' section (cluster, task_definition, container, region, subnets)")
        limit = self.remote
        if limit is not None and self.chunk_max_seconds > limit.timeout_seconds - limit.deadline_margin_seconds:
            raise ValueError(
                f"chunk_max_seconds ({self.chunk_max_seconds}) must leave the chunk time to finish: at most "
                f"{self.kind}.timeout_seconds - deadline_margin_seconds "
                f"({limit.timeout_seconds - limit.deadline_margin_seconds})"
            )
        return self

    @property
    def remote(self) -> LambdaCompute | EcsCompute | None:
        """The settings of the chosen remote kind (None for in_process)."""
        return {"lambda": self.lambda_, "ecs": self.ecs}.get(self.kind)


class SourceConfig(_Strict):
    """A source: one Snowflake account, one PostgreSQL target, its tables and its resume rules."""

    name: str
    snowflake: SnowflakeConfig
    postgres: PostgresConfig
    tables: list[TableConfig] = Field(min_length=1)
    resume_max_age_hours: float = Field(default=12, gt=0)
    no_resume: bool = False
    max_resume_attempts: int = Field(default=5, ge=0, description="automatic resumes before giving up")
    chunk_timeout_seconds: int = Field(
        default=900, ge=5, description="a chunk's transaction is cut by PostgreSQL after this long"
    )
    lock_timeout_seconds: int = Field(default=30, ge=1)
    stale_lock_seconds: int = Field(
        default=60,
        ge=5,
        description="a run whose process stops answering (frozen, paused) loses the source's lock after this long",
    )
    workers: int = Field(default=1, ge=1, le=64, description="chunks copied at once within this source")
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    verify: bool = Field(default=True, description="checksum every chunk on both sides inside its transaction")
    nul_bytes: Literal["fail", "replace"] = Field(
        default="fail", description="PostgreSQL text cannot hold NUL: fail the chunk naming the row, or replace"
    )
    nul_replacement: str = Field(default="\ufffd", description="what replaces a NUL byte when nul_bytes: replace")

    @model_validator(mode="after")
    def _chunk_timeout_outlasts_the_worker(self) -> SourceConfig:
        """PostgreSQL ends a chunk's transaction after chunk_timeout_seconds and the next attempt ends a
        holder older than that: a worker still allowed to run must never look stale."""
        remote = self.compute.remote
        if remote is not None and self.chunk_timeout_seconds <= remote.timeout_seconds:
            what = "the Lambda function's timeout" if self.compute.kind == "lambda" else "the ECS chunk time limit"
            raise ValueError(
                f"chunk_timeout_seconds ({self.chunk_timeout_seconds}) must exceed compute.{self.compute.kind}."
                f"timeout_seconds ({remote.timeout_seconds}), {what}: else PostgreSQL could end a chunk the worker "
                f"is still copying. Set chunk_timeout_seconds to at least {remote.timeout_seconds + 60}"
            )
        return self

    @model_validator(mode="after")
    def _unique_targets(self) -> SourceConfig:
        seen: set[str] = set()
        for table in self.tables:
            if table.key in seen:
                raise ValueError(f"two tables write into {table.key}")
            seen.add(table.key)
        return self

    def table(self, key: str) -> TableConfig:
        for table in self.tables:
            if table.key == key:
                return table
        raise ConfigError(f"source {self.name!r} has no table {key!r}; known: {', '.join(t.key for t in self.tables)}")

    def fingerprint(self) -> str:
        """What decides which rows land where; a run is resumed only under the same fingerprint."""
        material = {
            "snowflake": {"account": self.snowflake.account, "database": self.snowflake.database},
            # publish_min_fraction guards the swap, it does not decide rows: changing it keeps the run.
            "tables": [t.model_dump(exclude={"publish_min_fraction"}) for t in self.tables],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


class _FileModel(_Strict):
    defaults: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = Field(min_length=1)


_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DEFAULTABLE = {
    "verify",
    "nul_bytes",
    "nul_replacement",
    "resume_max_age_hours",
    "no_resume",
    "max_resume_attempts",
    "chunk_timeout_seconds",
    "lock_timeout_seconds",
    "stale_lock_seconds",
    "workers",
    "compute",
    "postgres",
}


class Config(BaseModel):
    """Every configured source, read from one file."""

    model_config = ConfigDict(frozen=True)
    path: Path
    sources: dict[str, SourceConfig]

    def source(self, name: str | None) -> SourceConfig:
        if name is None:
            if len(self.sources) == 1:
                return next(iter(self.sources.values()))
            raise ConfigError(f"{self.path}: several sources are configured; name one of: {', '.join(self.sources)}")
        if name not in self.sources:
            raise ConfigError(f"{self.path}: no source named {name!r}; configured: {', '.join(self.sources)}")
        return self.sources[name]


def config_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def _format_error(path: Path, prefix: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        elif item["type"] == "missing":
            message = "required field is missing; add it"
        lines.append(f"{path}: {loc}: {message}")
    return "\n".join(lines)


def _yaml_error(path: Path, exc: Exception) -> str:
    """``file:line:column: what`` (as editors and compilers print it), from the parser's marks."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    if isinstance(exc, yaml.MarkedYAMLError):
        what = "; ".join(str(part) for part in (exc.problem, exc.context) if part)
    else:
        what = str(exc).splitlines()[0]
    return f"{where}: not valid YAML: {what}"


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the file; raise ``ConfigError`` naming the file, the field and the fix."""
    path = config_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass --config FILE or set {CONFIG_ENV}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must hold a mapping with a 'sources' key")
    try:
        file_model = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, "", exc)) from None
    unknown_defaults = set(file_model.defaults) - _DEFAULTABLE
    if unknown_defaults:
        raise ConfigError(
            f"{path}: defaults.{sorted(unknown_defaults)[0]}: not a default; allowed: {', '.join(sorted(_DEFAULTABLE))}"
        )
    sources: dict[str, SourceConfig] = {}
    errors: list[str] = []
    for name, body in file_model.sources.items():
        if not _SOURCE_NAME.match(str(name)):
            errors.append(f"{path}: sources.{name}: source names are lower-case letters, digits and _")
            continue
        if not isinstance(body, dict):
            errors.append(f"{path}: sources.{name}: must be a mapping")
            continue
        merged = {**file_model.defaults, **body, "name": name}
        try:
            sources[name] = SourceConfig.model_validate(merged)
        except ValidationError as exc:
            errors.append(_format_error(path, f"sources.{name}", exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return Config(path=path, sources=sources)
