"""Secrets are masked in text that comes from outside (driver errors, library logs), never in our own
message templates: a password that is also an ordinary word must not mangle our messages."""

from __future__ import annotations

import logging
import os

import psycopg
import pytest

from cm_datacopy import redact
from cm_datacopy.chunk.task import classify
from cm_datacopy_tests.helpers import SNOWFLAKE_PASSWORD_ENV, cli, sf_execute, write_config


@pytest.fixture
def secret():
    value = "wrong"
    redact.remember(value)
    yield value
    with redact._lock:
        redact._secrets.discard(value)


def test_a_password_that_is_a_word_of_our_messages_does_not_mangle_them(snowflake_server, sf_db, pg_db, config_path):
    sf_execute(snowflake_server, sf_db, "USE SCHEMA PUBLIC", "CREATE TABLE T (ID NUMBER(38,0))")
    write_config(config_path, snowflake_server, sf_db, pg_db, [{"source": "T", "target_schema": "copy"}])
    env = {**os.environ, SNOWFLAKE_PASSWORD_ENV: "wrong"}  # not the stand-in's password: the login fails
    for command in ("check", "run"):
        result = cli(config_path, command, "analytics", env=env)
        assert result.returncode == 2
        message = " ".join(result.stderr.split())
        assert "Snowflake refused user 'cm_datacopy': wrong user or password" in message, message
        assert "***" not in message


def test_outside_text_is_masked_where_it_enters(secret):
    # A driver error quoting the secret: the quoted text is masked, our words around it are not.
    error = psycopg.errors.DataError(f'invalid input syntax for type integer: "{secret}"')
    message, retryable = classify(error, "copying into copy.wrong_answers")
    assert message == "a value does not fit its PostgreSQL column while copying into copy.wrong_answers: " + (
        'invalid input syntax for type integer: "***"'
    )
    assert retryable is False
    assert redact.outside(RuntimeError(f"password={secret}\nsecond line")) == "password=***"


def test_log_records_are_masked_in_their_outside_parts(secret):
    masking = redact.RedactingFilter()

    def record(name: str, msg: str, *args: object) -> str:
        rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args or None, None)
        masking.filter(rec)
        return rec.getMessage()

    # Ours: the format string is our text, its arguments may come from outside.
    assert record("cm_datacopy.chunk", "wrong answer from %s: %s", "server", f"token {secret}") == (
        "wrong answer from server: token ***"
    )
    mapping = logging.LogRecord("cm_datacopy.x", logging.WARNING, __file__, 1, "%(a)s", ({"a": secret},), None)
    masking.filter(mapping)
    assert mapping.getMessage() == "***"
    # Another library's record is outside text entirely.
    assert record("snowflake.connector.network", f"login failed with password {secret}") == (
        "login failed with password ***"
    )
