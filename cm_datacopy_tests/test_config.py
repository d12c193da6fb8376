"""Bad configs: one clear error naming the file, the field and the fix; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cm_datacopy.config import load_config
from cm_datacopy.errors import ConfigError
from cm_datacopy_tests.helpers import REPO, cli, pg_rows

GOOD_SOURCE = {
    "snowflake": {
        "account": "acme",
        "user": "COPIER",
        "password_env": "SF_PASSWORD",
        "database": "ANALYTICS",
    },
    "postgres": {"dbname": "target", "user": "copier"},
    "tables": [{"source": "EVENTS", "target_schema": "analytics", "chunk_key": "ID", "chunk_size": 10}],
}


def _with(path: tuple[str | int, ...], value: object) -> dict:
    source = yaml.safe_load(yaml.safe_dump(GOOD_SOURCE))
    node = source
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return {"sources": {"analytics": source}}


_DELETE = object()

BAD_CONFIGS = [
    pytest.param(
        _with(("snowflake", "private_key_file_env"), "SF_KEY"),
        "sources.analytics.snowflake",
        "set exactly one of password_env or private_key_file_env",
        id="password-and-key",
    ),
    pytest.param(
        _with(("snowflake", "password_env"), _DELETE),
        "sources.analytics.snowflake",
        "set exactly one of password_env or private_key_file_env",
        id="no-credentials",
    ),
    pytest.param(
        _with(("snowflake", "password"), "hunter2"),
        "sources.analytics.snowflake.password",
        "unknown field",
        id="password-in-file",
    ),
    pytest.param(
        _with(("snowflake", "password_env"), "not a name"),
        "sources.analytics.snowflake.password_env",
        "is not an environment variable name",
        id="bad-env-name",
    ),
    pytest.param(
        _with(("snowflake", "account"), _DELETE),
        "sources.analytics.snowflake.account",
        "required field is missing",
        id="missing-account",
    ),
    pytest.param(_with(("tables",), []), "sources.analytics.tables", "at least 1 item", id="no-tables"),
    pytest.param(
        _with(("tables", 0, "chunk_size"), 0),
        "sources.analytics.tables.0.chunk_size",
        "greater than or equal to 1",
        id="chunk-size-zero",
    ),
    pytest.param(
        _with(("tables", 0, "chunk_sise"), 10),
        "sources.analytics.tables.0.chunk_sise",
        "unknown field; remove it or check its spelling",
        id="typo",
    ),
    pytest.param(
        _with(("postgres", "port"), "five"), "sources.analytics.postgres.port", "valid integer", id="port-not-a-number"
    ),
    pytest.param(
        _with(("resume_max_age_hours",), -1),
        "sources.analytics.resume_max_age_hours",
        "greater than 0",
        id="negative-max-age",
    ),
    pytest.param({"sources": {"Bad-Name": GOOD_SOURCE}}, "sources.Bad-Name", "lower-case letters", id="source-name"),
    pytest.param({"source": {}}, "source", "unknown field", id="wrong-top-level"),
    pytest.param(
        {"sources": {"analytics": {**GOOD_SOURCE, "tables": [GOOD_SOURCE["tables"][0]] * 2}}},
        "sources.analytics",
        "two tables write into analytics.events",
        id="duplicate-target",
    ),
    pytest.param(
        {"defaults": {"chunk_size": 5}, "sources": {"analytics": GOOD_SOURCE}},
        "defaults.chunk_size",
        "not a default",
        id="unknown-default",
    ),
]


@pytest.mark.parametrize("content, field, message", BAD_CONFIGS)
def test_bad_config_names_file_field_and_fix(tmp_path: Path, content: dict, field: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    text = str(error.value)
    assert text.startswith(f"{path}: {field}"), text
    assert message in text


@pytest.mark.parametrize(
    "text, message",
    [
        ("sources: [unclosed", "not valid YAML"),
        ("- a list\n- not a mapping\n", "must hold a mapping with a 'sources' key"),
        ("", "must hold a mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found; pass --config FILE or set CM_DATACOPY_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def test_source_selection(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"sources": {"analytics": GOOD_SOURCE, "conflict": GOOD_SOURCE}}))
    config = load_config(path)
    assert config.source("conflict").name == "conflict"
    with pytest.raises(ConfigError, match="several sources are configured; name one of: analytics, conflict"):
        config.source(None)
    with pytest.raises(ConfigError, match="no source named 'nope'; configured: analytics, conflict"):
        config.source("nope")
    path.write_text(yaml.safe_dump({"sources": {"analytics": GOOD_SOURCE}}))
    assert load_config(path).source(None).name == "analytics", "the only source is the default"


def test_shipped_config_holds_both_sources_with_the_seed_defaults() -> None:
    config = load_config(REPO / "cm_datacopy.yaml")
    assert set(config.sources) == {"analytics", "conflict"}
    for source in config.sources.values():
        assert source.resume_max_age_hours == 12 and source.no_resume is False
    assert config.sources["analytics"].snowflake.password_env
    assert config.sources["conflict"].snowflake.private_key_file_env, "the second example shows key-pair auth"


def test_validate_command_reports_and_writes_nothing(tmp_path: Path, pg_db: dict) -> None:
    bad = yaml.safe_load(yaml.safe_dump(GOOD_SOURCE))
    bad["postgres"] = {k: pg_db[k] for k in ("host", "port", "dbname", "user")}
    bad["tables"][0]["chunk_size"] = -5
    path = tmp_path / "cm_datacopy.yaml"
    path.write_text(yaml.safe_dump({"sources": {"analytics": bad}}))
    for command in ("validate", "run", "check", "plan", "status"):
        result = cli(path, command, "analytics")
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "sources.analytics.tables.0.chunk_size: Input should be greater than or equal to 1" in result.stderr
        assert "Traceback" not in result.stderr
    assert pg_rows(pg_db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'migration_status'") == [(0,)]


def test_missing_secret_names_the_variable_not_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cm_datacopy.yaml"
    path.write_text(yaml.safe_dump({"sources": {"analytics": GOOD_SOURCE}}))
    monkeypatch.delenv("SF_PASSWORD", raising=False)
    cfg = load_config(path).source("analytics")
    with pytest.raises(ConfigError, match=r"snowflake\.password_env: environment variable SF_PASSWORD is not set"):
        cfg.snowflake.connect_kwargs()
