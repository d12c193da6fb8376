"""A Snowflake session whose meaning does not depend on account or user defaults.

Every session pins the parameters that change what our SQL means or how results arrive
(``pinned_session_parameters``), tags its queries so a DBA can find them (``QUERY_TAG``), and asks
the connector for exact decimals (``arrow_number_to_decimal``: otherwise NUMBER(p,s>0) arrives as
float64). The connector cancels a query after ``network_timeout`` unless ``execute`` gets its own
timeout, so no ``network_timeout`` is set and every statement runs through ``execute`` here, with
``query_timeout_seconds`` as both the client's budget and the server's ``STATEMENT_TIMEOUT_IN_SECONDS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from cm_datacopy.config import SnowflakeConfig
from cm_datacopy.errors import ConnectionCheckError
from cm_datacopy.redact import outside


def pinned_session_parameters(cfg: SnowflakeConfig, query_tag: str) -> dict[str, Any]:
    """Session parameters set at login; they override whatever the account or user has set."""
    return {
        "TIMEZONE": "UTC",  # TIMESTAMP_LTZ values and CURRENT_TIMESTAMP() in UTC
        "QUOTED_IDENTIFIERS_IGNORE_CASE": False,  # "Events" and "EVENTS" are different columns
        "DATE_INPUT_FORMAT": "AUTO",  # our bound dates and timestamps are ISO text cast in SQL
        "TIME_INPUT_FORMAT": "AUTO",
        "TIMESTAMP_INPUT_FORMAT": "AUTO",
        "PYTHON_CONNECTOR_QUERY_RESULT_FORMAT": "ARROW",  # JSON makes fetch_arrow_batches raise
        "ROWS_PER_RESULTSET": 0,  # 0: no cap on the rows a result returns
        "STATEMENT_TIMEOUT_IN_SECONDS": cfg.query_timeout_seconds,
        "QUERY_TAG": query_tag[:2000],
        "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False,
    }


def describe_connect_error(exc: Exception, cfg: SnowflakeConfig) -> str:
    """One actionable line for a failed login; never the password."""
    text = str(exc)
    where = f"{cfg.host}:{cfg.port}" if cfg.host else f"account {cfg.account}"
    if "390100" in text or "Incorrect username or password" in text:
        return f"Snowflake refused user {cfg.user!r}: wrong user or password (check {cfg.password_env or 'the key'})"
    if "JWT" in text or "private key" in text.lower():
        return f"Snowflake refused key-pair login for {cfg.user!r}: check the key file and its passphrase"
    return f"cannot reach Snowflake at {where}: {type(exc).__name__}: {outside(exc, 300)}"


class Session:
    """One Snowflake connection with its config: every statement goes through ``execute``."""

    def __init__(self, conn: Any, cfg: SnowflakeConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self._dialect: str | None = None

    def execute(self, statement: str, params: Sequence[Any] = (), *, timeout: int | None = None) -> Any:
        """Run one statement; the client cancels it only after ``timeout`` (default ``query_timeout_seconds``)."""
        cur = self.conn.cursor()
        cur.execute(statement, list(params), timeout=timeout or self.cfg.query_timeout_seconds)
        return cur

    def is_closed(self) -> bool:
        return bool(self.conn.is_closed())

    @property
    def dialect(self) -> str:
        """``snowflake``, or ``standin`` for the local fakesnow server (DuckDB underneath).

        Asked of the server once (a successful answer is kept; a failed query is not cached).
        """
        if self._dialect is None:
            version = str(self.execute("SELECT CURRENT_VERSION()").fetchone()[0])
            self._dialect = "standin" if "standin" in version else "snowflake"
        return self._dialect


@contextlib.contextmanager
def connect(cfg: SnowflakeConfig, query_tag: str = "cm_datacopy") -> Iterator[Session]:
    """An open session; closed on every exit."""
    import snowflake.connector

    kwargs = cfg.connect_kwargs()
    kwargs["session_parameters"] = pinned_session_parameters(cfg, query_tag)
    kwargs["arrow_number_to_decimal"] = True
    try:
        conn = snowflake.connector.connect(**kwargs)
    except Exception as exc:  # the connector raises many kinds; each becomes one line
        raise ConnectionCheckError(describe_connect_error(exc, cfg)) from None
    finally:
        kwargs.clear()
    try:
        yield Session(conn, cfg)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# Snowflake error numbers after which the same query can succeed: cancelled (by a timeout or the
# warehouse), the session or its token expired, the service was briefly unavailable.
_RETRYABLE_ERRNOS = {604, 630, 390111, 390112, 390114}


def is_retryable_error(exc: BaseException) -> bool:
    """Whether a Snowflake error is worth another attempt (network, cancel, expiry) or final (SQL, data)."""
    from snowflake.connector import errors

    if isinstance(exc, (errors.OperationalError, errors.InterfaceError)):
        return True
    if getattr(exc, "errno", None) in _RETRYABLE_ERRNOS:
        return True
    return str(getattr(exc, "sqlstate", "") or "").startswith("08")
