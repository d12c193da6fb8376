"""Shared fixtures: one Snowflake stand-in server for the session, a fresh database per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cm_datacopy.standin import snowflake as standin
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, fresh_pg_database, new_sf_database


@pytest.fixture(scope="session")
def snowflake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standin.StandinSnowflake]:
    """fakesnow in server mode, in its own process; the real connector talks to it over HTTP.

    Faithful mode (results shaped as real Snowflake sends them) unless the suite runs with
    ``CM_DATACOPY_STANDIN_FAITHFUL=0`` (fakesnow's own shapes, "legacy").
    """
    password = secrets.token_urlsafe(12)
    os.environ[SNOWFLAKE_PASSWORD_ENV] = password
    with standin.running(password, tmp_path_factory.mktemp("fakesnow")) as where:
        yield where


@pytest.fixture
def pg_db() -> Iterator[dict[str, Any]]:
    """A fresh database on the real PostgreSQL server, dropped after the test."""
    with fresh_pg_database() as kwargs:
        yield kwargs


@pytest.fixture
def sf_db(snowflake_server: standin.StandinSnowflake) -> str:
    """A fresh database on the Snowflake stand-in."""
    return new_sf_database(snowflake_server)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "cm_datacopy.yaml"
