"""Masking of secrets in text that comes from outside cm_datacopy.

Secrets reach the process only through environment variables named in the config (``*_env``
fields); every such value read is remembered here. cm_datacopy never puts a secret into its own
messages (the values are ``SecretStr`` and no template interpolates them), so a secret can only
appear in text written by someone else: a driver's error, a library's log record. The rule is
therefore to mask **outside text where it enters**, and never our own message templates:

* ``redact(text)`` / ``outside(exc)`` mask the text of an exception or any other outside text
  before it is put into one of our messages (``f"cannot reach …: {outside(exc)}"``);
* ``RedactingFilter`` masks log records: a record of another library entirely, one of ours only
  in its arguments (``log.warning("… %s", value)``), never its format string.

Masking a whole message instead would mangle our own words: a password ``wrong`` turned "wrong user
or password" into "*** user or password".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "***"
OWN_LOGGERS = "cm_datacopy"


def remember(value: str) -> None:
    if len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` (from outside: a driver, a server, a library) with every remembered secret masked."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        text = text.replace(value, MASK)
    return text


def outside(exc: BaseException, limit: int = 1000) -> str:
    """The first line of an exception's text (or its type, if it has none), masked."""
    text = str(exc).strip()
    return redact(text.splitlines()[0][:limit]) if text else type(exc).__name__


def _masked(value: object) -> object:
    return redact(str(value)) if isinstance(value, (str, BaseException)) else value


class RedactingFilter(logging.Filter):
    """Masks secrets in log records: another library's whole message; ours only in its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == OWN_LOGGERS or record.name.startswith(OWN_LOGGERS + "."):
            if isinstance(record.args, Mapping):
                record.args = {k: _masked(v) for k, v in record.args.items()}
            elif record.args:
                record.args = tuple(_masked(a) for a in record.args)
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
