"""A Snowflake stand-in: fakesnow in server mode, in its own process.

The real ``snowflake-connector-python`` talks to it over HTTP on loopback, so the product's own
Snowflake code path runs. Always added to fakesnow here:

* NULL timestamps survive (fakesnow 0.12 server mode turns them into 1970-01-01); a stand-in that
  loses NULLs would hide real bugs.
* ``CURRENT_VERSION()`` says it is the stand-in (``10.0.0 cm-datacopy-standin``: after a space, where
  Snowflake documents an optional internal identifier, so clients that parse the version still can):
  cm_datacopy picks the SQL of the few functions DuckDB lacks by what the server is (``Session.dialect``).
* The login checks the user and password, so a wrong password is refused as Snowflake would
  refuse it (fakesnow accepts anything).
* fakesnow's translation of a query (Snowflake SQL → sqlglot tree → its transforms → DuckDB SQL,
  plus the parses it does to type and describe the result) is kept per SQL text and session state
  (see ``_TranslationCache``): it is most of a chunk's fixed cost otherwise (about 250 ms against
  40 ms with a checksum, measured on a busy 2-core machine), a cost real Snowflake does not have.
  ``CM_DATACOPY_STANDIN_TRANSLATION_CACHE=0`` turns it off.

Faithful mode is the default (``CM_DATACOPY_STANDIN_FAITHFUL=0``, ``faithful=False`` for
:func:`start` / :func:`running`, or ``--no-faithful`` selects fakesnow's own shapes, "legacy"). It
makes the wire format look like real Snowflake's, so the connector's own conversion code
(``CArrowTableIterator`` / ``CArrowChunkIterator``) runs on what Snowflake would send:

* NUMBER/FIXED columns are sent as the narrowest signed integer (int8/16/32/64) that holds the
  chunk's unscaled values, ``decimal128(p, s)`` only when they do not fit in int64, with
  ``logicalType=FIXED, precision, scale, physicalType=SB1..SB16, charLength, byteLength`` metadata.
  Scale > 0 therefore arrives as float64 unless the connection has ``arrow_number_to_decimal=True``.
* TIMESTAMP_NTZ / TIMESTAMP_LTZ are sent at scale 9 as struct ``{epoch: int64 s, fraction: int32 ns}``
  and TIMESTAMP_TZ as struct ``{epoch, fraction, timezone}`` (timezone = offset minutes + 1440,
  ``byteLength=16``). DuckDB stores microseconds and UTC instants only, so sub-microsecond digits
  and per-value UTC offsets are kept in a sidecar that records every timestamp literal and bound
  timestamp value the stand-in receives (see ``_TimestampDetails``).
* Results are split into an inline first chunk plus further chunks listed in ``chunks`` (each an
  Arrow IPC stream of several record batches, gzip-compressed, protected by ``qrmk`` SSE-C
  headers) that the connector downloads from this server, as it downloads them from cloud storage.
* A per-query delay (``/* standin:delay=SECONDS */`` in the SQL text, or
  ``CM_DATACOPY_STANDIN_QUERY_DELAY`` for the statements matching ``CM_DATACOPY_STANDIN_DELAY_MATCH``;
  ``FaithfulSettings`` for :func:`start`) with cancellation through ``abort-request`` (error 000604
  "SQL execution canceled"), and Snowflake's "query in progress" protocol: a query still running
  after ``CM_DATACOPY_STANDIN_PROGRESS_AFTER`` seconds (default 45) is answered with code 333333
  and a ``getResultUrl`` the connector polls, so no single HTTP request outlives the socket timeout.

Run it with ``python -m cm_datacopy.standin.snowflake --port 0 --port-file F [--no-faithful]``;
stop it with SIGTERM. ``GET /standin/v1/stats`` reports what the stand-in saw (logins' session
parameters, in-progress answers, aborts, chunk downloads).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import gzip
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

STANDIN_USER = "cm_datacopy"
STANDIN_ACCOUNT = "standin"
STANDIN_VERSION_TAG = "cm-datacopy-standin"
FAITHFUL_ENV = "CM_DATACOPY_STANDIN_FAITHFUL"
PASSWORD_ENV = "CM_DATACOPY_STANDIN_PASSWORD"
TRANSLATION_CACHE_ENV = "CM_DATACOPY_STANDIN_TRANSLATION_CACHE"

_FALSE = {"0", "false", "no", "off", "legacy"}


def faithful_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Faithful unless ``CM_DATACOPY_STANDIN_FAITHFUL`` says otherwise (0, false, no, off, legacy)."""
    return (env if env is not None else os.environ).get(FAITHFUL_ENV, "").strip().lower() not in _FALSE


@dataclass(frozen=True)
class FaithfulSettings:
    """Knobs of faithful mode; each has an environment variable (the server reads them at start)."""

    first_chunk_rows: int = 1000  # rows in the inline first chunk (rowsetBase64)
    chunk_rows: int = 50_000  # rows per further (downloaded) chunk
    batch_rows: int = 16_384  # rows per Arrow record batch inside a chunk
    progress_after: float = 45.0  # answer 333333 "query in progress" after this many seconds; 0 = never
    query_delay: float = 0.0  # delay every statement matching delay_match by this many seconds
    delay_match: str = ""  # regular expression (searched in the SQL text); empty = every statement

    ENV_PREFIX = "CM_DATACOPY_STANDIN_"

    @classmethod
    def env_name(cls, name: str) -> str:
        return cls.ENV_PREFIX + name.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaithfulSettings:
        env = env if env is not None else os.environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(cls.env_name(f.name))
            if raw is None or raw == "":
                continue
            default = getattr(cls, f.name)
            values[f.name] = type(default)(raw) if not isinstance(default, str) else raw
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {self.env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}


def _patch_fakesnow(
    user: str, password: str, faithful: bool = False, settings: FaithfulSettings | None = None
) -> object:
    """Return fakesnow's ASGI app with the NULL-timestamp fix, a password check and (optionally) faithful mode."""
    import fakesnow.arrow as fa
    import fakesnow.server as fs
    import pyarrow as pa
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    original_struct = fa.timestamp_to_sf_struct

    def keep_nulls(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        ts = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
        struct = original_struct(ts.fill_null(0))
        return pa.StructArray.from_arrays(struct.flatten(), fields=list(struct.type), mask=ts.is_null())

    fa.timestamp_to_sf_struct = keep_nulls

    import fakesnow.transforms.transforms as ft

    if STANDIN_VERSION_TAG not in ft.SERVER_VERSION:
        ft.SERVER_VERSION = f"{ft.SERVER_VERSION} {STANDIN_VERSION_TAG}"

    stats = _Stats()
    if os.environ.get(TRANSLATION_CACHE_ENV, "1").strip().lower() not in _FALSE:
        _TranslationCache(stats).install(fs)
    original_login = fs.login_request

    async def checked_login(request):  # type: ignore[no-untyped-def]
        data = _json_body(await request.body(), request.headers).get("data", {})
        if data.get("LOGIN_NAME", "").lower() != user.lower() or data.get("PASSWORD") != password:
            return JSONResponse(
                {
                    "data": {"errorCode": "390100", "sqlState": "08004"},
                    "code": "390100",
                    "message": "Incorrect username or password was specified.",
                    "success": False,
                }
            )
        stats.note_login(data)
        return await original_login(request)

    _replace_endpoint(fs.app, "/session/v1/login-request", checked_login)

    async def stats_endpoint(request):  # type: ignore[no-untyped-def]
        return JSONResponse(stats.snapshot())

    fs.app.router.routes.append(Route("/standin/v1/stats", stats_endpoint, methods=["GET"]))

    if faithful:
        _Faithful(fs, settings or FaithfulSettings.from_env(), stats).install()
    return fs.app


def _replace_endpoint(app: Any, path: str, endpoint: Any) -> None:
    from starlette.routing import request_response

    for route in app.routes:
        if getattr(route, "path", None) == path:
            route.endpoint = endpoint
            route.app = request_response(endpoint)
            return
    raise RuntimeError(f"fakesnow has no route {path}")


def _json_body(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return json.loads(body) if body else {}


class _Stats:
    """What the stand-in saw; served at /standin/v1/stats for tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.logins: list[dict[str, Any]] = []

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def note_login(self, data: Mapping[str, Any]) -> None:
        env = data.get("CLIENT_ENVIRONMENT") or {}
        entry = {
            "session_parameters": data.get("SESSION_PARAMETERS"),
            "client_app_id": data.get("CLIENT_APP_ID"),
            "client_app_version": data.get("CLIENT_APP_VERSION"),
            "login_timeout": env.get("LOGIN_TIMEOUT"),
            "network_timeout": env.get("NETWORK_TIMEOUT"),
            "socket_timeout": env.get("SOCKET_TIMEOUT"),
        }
        with self._lock:
            self.logins = [*self.logins[-19:], entry]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"counters": dict(self.counters), "logins": list(self.logins)}


# --------------------------------------------------------------------------------------------
# Translation cache
# --------------------------------------------------------------------------------------------

# (tree, its DuckDB SQL) for the one ``Expression.sql(dialect="duckdb")`` call fakesnow is about to make
_known_sql: contextvars.ContextVar[tuple[Any, str] | None] = contextvars.ContextVar("standin_known_sql", default=None)


class _Lru:
    """A small thread-safe LRU map (the server runs statements on a thread pool)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class _Translated:
    tree: Any  # fakesnow's transformed tree: read, never changed, by fakesnow after translation
    duckdb_sql: str
    has_placeholder: bool


class _TranslationCache:
    """fakesnow's per-statement translation, kept for queries whose translation depends only on their text.

    fakesnow translates every statement afresh: parse (Snowflake dialect), some 75 tree transforms,
    generate DuckDB SQL; then, to type the result, parse and generate ``DESCRIBE <that SQL>``; the
    server parses the text once more for the statement type. For a checksum query (~1,300 characters)
    that is ~80 ms of the stand-in's CPU on a fast core (against ~20 ms for the rest of the query), and
    several times that on a busy machine; real Snowflake compiles such a query once and reuses it.

    Kept only for a plain query (a SELECT/UNION/WITH …, fakesnow marks nothing on its tree: no USE,
    SHOW, stage, RESULT_SCAN, seeded random, comment …) that fakesnow runs as one statement without
    ``IDENTIFIER(…)`` (whose translation consumes bound values), keyed by the SQL text after
    fakesnow inlines session variables and by the session's database and schema (the transforms
    that read session state read those). DDL, DML and everything else are translated as before. A
    hit runs fakesnow's own ``_execute`` on the kept tree, so results, errors, transactions and the
    result cache behave as without the cache.
    """

    def __init__(self, stats: _Stats, size: int = 1024) -> None:
        self.stats = stats
        self.queries = _Lru(size)
        self.describes = _Lru(size)
        self.parses = _Lru(size)

    def install(self, fs: Any) -> None:
        import sqlglot.expressions.core as core
        from fakesnow.cursor import FakeSnowflakeCursor

        if getattr(FakeSnowflakeCursor, "_standin_translation_cache", None) is not None:
            return
        original_sql = core.Expression.sql

        def sql(self: Any, dialect: Any = None, copy: bool = True, **opts: Any) -> str:
            known = _known_sql.get()
            if known is not None and known[0] is self and dialect == "duckdb" and not opts:
                return known[1]
            return original_sql(self, dialect, copy, **opts)

        core.Expression.sql = sql
        self._install_cursor(FakeSnowflakeCursor)
        original_parse = fs.parse_one

        def parse_one(command: str) -> Any:
            # the server parses only to read the statement type and count placeholders: never changed
            tree = self.parses.get(command)
            if tree is None:
                tree = original_parse(command)
                self.parses.put(command, tree)
            return tree

        fs.parse_one = parse_one

    def _install_cursor(self, cursor_class: Any) -> None:
        import snowflake.connector.errors
        import sqlglot
        from sqlglot import exp

        cache = self
        original_execute = cursor_class.execute
        original_transform = cursor_class._transform
        recording: contextvars.ContextVar[list[tuple[bool, Any]] | None] = contextvars.ContextVar(
            "standin_translation", default=None
        )

        def transform(self: Any, expression: Any, params: Any) -> Any:
            query = isinstance(expression, exp.Query)
            transformed = original_transform(self, expression, params)
            calls = recording.get()
            if calls is not None:
                calls.append((query, transformed))
            return transformed

        def execute(self: Any, command: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            key = cache._key(self, command, params, args, kwargs)
            if key is None:
                return original_execute(self, command, params, *args, **kwargs)
            hit = cache.queries.get(key)
            if hit is None:
                cache.stats.bump("translations")
                calls: list[tuple[bool, Any]] = []
                token = recording.set(calls)
                try:
                    result = original_execute(self, command, params, *args, **kwargs)
                finally:
                    recording.reset(token)
                if len(calls) == 1 and calls[0][0]:
                    tree = calls[0][1]
                    if isinstance(tree, exp.Query) and set(tree.args) <= set(type(tree).arg_types):
                        cache.queries.put(
                            key, _Translated(tree, tree.sql(dialect="duckdb"), tree.find(exp.Placeholder) is not None)
                        )
                return result
            cache.stats.bump("translations_reused")
            bound = kwargs["binding_params"] if kwargs.get("binding_params") else params
            if not isinstance(bound, (list, dict)) and bound is not None:
                bound = list(bound)
            self._sqlstate = None
            token = _known_sql.set((hit.tree, hit.duckdb_sql))
            try:
                self._execute(hit.tree, bound if hit.has_placeholder else None)
            except snowflake.connector.errors.ProgrammingError as e:
                self._sqlstate = e.sqlstate
                raise
            finally:
                _known_sql.reset(token)
            return self

        def describe_last_sql(self: Any) -> list:
            text = f"DESCRIBE {self._last_sql}"
            known = cache.describes.get(text)
            if known is None:
                tree = sqlglot.parse_one(text, read="duckdb")
                known = (tree, tree.sql(dialect="duckdb"))
                cache.describes.put(text, known)
            with self._conn.cursor() as cur:
                token = _known_sql.set(known)
                try:
                    cur._execute(known[0], self._last_params)
                finally:
                    _known_sql.reset(token)
                return cur.fetchall()

        cursor_class._transform = transform
        cursor_class.execute = execute
        cursor_class._describe_last_sql = describe_last_sql
        cursor_class._standin_translation_cache = self

    @staticmethod
    def _key(cur: Any, command: str, params: Any, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """The statement's cache key, or None when its translation may depend on more than the key."""
        if args or set(kwargs) - {"binding_params", "server"} or "identifier" in command.lower():
            return None
        if os.environ.get("FAKESNOW_DEBUG"):
            return None
        conn = cur._conn
        if conn.nop_regexes:
            return None
        if params and not kwargs.get("binding_params") and conn._paramstyle in ("pyformat", "format"):
            return None  # fakesnow formats the values into the text
        head = command.lstrip()[:16].lower()
        if not (head.startswith(("select", "with", "(")) or head.startswith("/*")):
            return None
        return (
            conn.variables.inline_variables(command),
            conn.database,
            conn.schema,
            conn.database_set,
            conn.schema_set,
        )


# --------------------------------------------------------------------------------------------
# Faithful mode
# --------------------------------------------------------------------------------------------

_DELAY_MARK = re.compile(r"/\*\s*standin:delay\s*=\s*([0-9]+(?:\.[0-9]*)?)\s*\*/", re.IGNORECASE)
_STRING_LITERAL = re.compile(r"'((?:[^'\\]|''|\\.)*)'")
_TIMESTAMP_TEXT = re.compile(
    r"\s*(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{0,9}))?)?"
    r"\s*(Z|UTC|[+-]\d{2}(?::?\d{2})?)?\s*",
    re.IGNORECASE,
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_CANCELLED_MESSAGE = "SQL execution canceled"
_SSE_C_KEY = "x-amz-server-side-encryption-customer-key"  # the header the connector sends with qrmk
_DDL_HEAD = re.compile(r"\b(create|drop)\b", re.IGNORECASE)
_capture: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("standin_capture", default=None)


def parse_timestamp_text(text: str) -> tuple[int, int, int | None] | None:
    """``(wall-clock microseconds since 1970, nanoseconds below the microsecond, UTC offset minutes or None)``."""
    m = _TIMESTAMP_TEXT.fullmatch(text)
    if not m:
        return None
    y, mo, d, h, mi = (int(m.group(i)) for i in range(1, 6))
    s = int(m.group(6) or 0)
    digits = (m.group(7) or "").ljust(9, "0")
    try:
        days = date(y, mo, d).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    if h > 23 or mi > 59 or s > 59:
        return None
    nanos = int(digits)
    wall_us = (days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000 + nanos // 1000
    offset: int | None = None
    zone = m.group(8)
    if zone and zone.upper() not in ("Z", "UTC"):
        sign = -1 if zone[0] == "-" else 1
        body = zone[1:].replace(":", "")
        offset = sign * (int(body[:2]) * 60 + int(body[2:4] or 0))
    elif zone:
        offset = 0
    return wall_us, nanos % 1000, offset


class _TimestampDetails:
    """Sidecar for what DuckDB cannot store: sub-microsecond digits and each TIMESTAMP_TZ value's offset.

    DuckDB's TIMESTAMP keeps microseconds (it truncates the rest) and TIMESTAMPTZ keeps a UTC
    instant. Every timestamp the stand-in receives as SQL text or as a bound value is recorded here,
    keyed by the microsecond value DuckDB will hold (wall clock for NTZ, UTC instant for TZ/LTZ),
    both under the INSERT's target table (when the statement is an INSERT) and globally. A result
    read from one table looks its values up under that table first, then globally. The same key
    recorded twice in one scope with different details: the last one wins.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # scope ("" = global) -> kind ("ntz" | "tz") -> microseconds -> (extra nanoseconds, offset minutes | None)
        self._scopes: dict[str, dict[str, dict[int, tuple[int, int | None]]]] = {}
        self._keys: dict[tuple[str, str], Any] = {}

    def _note(self, scope: str, kind: str, us: int, rem: int, offset: int | None) -> None:
        with self._lock:
            for name in {scope, ""}:
                table = self._scopes.setdefault(name, {"ntz": {}, "tz": {}})[kind]
                if rem or offset or us in table:
                    table[us] = (rem, offset)
                    self._keys.pop((name, kind), None)

    def note_ntz(self, wall_us: int, rem: int, scope: str = "") -> None:
        self._note(scope, "ntz", wall_us, rem, None)

    def note_tz(self, instant_us: int, rem: int, offset: int | None, scope: str = "") -> None:
        self._note(scope, "tz", instant_us, rem, offset)

    def note_text(self, text: str, scope: str = "") -> None:
        parsed = parse_timestamp_text(text)
        if parsed is None:
            return
        wall_us, rem, offset = parsed
        self.note_ntz(wall_us, rem, scope)
        self.note_tz(wall_us - (offset or 0) * 60_000_000, rem, offset, scope)

    def note_sql(self, sql: str, scope: str = "") -> None:
        for literal in _STRING_LITERAL.findall(sql):
            if len(literal) <= 48:
                self.note_text(literal, scope)

    def note_bindings(self, bindings: Mapping[str, Any] | None, scope: str = "") -> None:
        for binding in (bindings or {}).values():
            if not isinstance(binding, dict):
                continue
            kind = str(binding.get("type", "")).upper()
            values = binding.get("value")
            for value in values if isinstance(values, list) else [values]:
                if value is None:
                    continue
                text = str(value)
                try:
                    if kind == "TIMESTAMP_NTZ":
                        ns = int(text)
                        self.note_ntz(ns // 1000, ns % 1000, scope)
                    elif kind == "TIMESTAMP_LTZ":
                        ns = int(text)
                        self.note_tz(ns // 1000, ns % 1000, None, scope)
                    elif kind == "TIMESTAMP_TZ":
                        ns_text, _, tz_text = text.partition(" ")
                        ns = int(ns_text)
                        self.note_tz(ns // 1000, ns % 1000, int(tz_text) - 1440 if tz_text else None, scope)
                    elif kind == "TEXT" and len(text) <= 48:
                        self.note_text(text, scope)
                except ValueError:
                    continue

    def lookup(self, kind: str, us: Any, valid: Any, scope: str = "") -> tuple[Any, Any]:
        """For int64 microsecond values: (extra nanoseconds, offset minutes or int32-min when unknown), or Nones."""
        import numpy as np

        rem = offset = None
        todo = valid.copy()
        with self._lock:
            for name in dict.fromkeys([scope, ""]):
                table = self._scopes.get(name, {}).get(kind)
                if not table or not todo.any():
                    continue
                keys = self._keys.get((name, kind))
                if keys is None:
                    keys = self._keys[(name, kind)] = np.fromiter(table.keys(), dtype=np.int64, count=len(table))
                hit = np.isin(us, keys) & todo
                if not hit.any():
                    continue
                if rem is None:
                    rem = np.zeros(len(us), dtype=np.int64)
                    offset = np.full(len(us), np.iinfo(np.int32).min, dtype=np.int64)
                for i in np.flatnonzero(hit):
                    extra, minutes = table[int(us[i])]
                    rem[i] = extra
                    if minutes is not None:
                        offset[i] = minutes
                todo &= ~hit
        return rem, offset


_INSERT_TARGET = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)*insert\s+(?:overwrite\s+)?into\s+((?:\"[^\"]+\"|[\w$]+)(?:\.(?:\"[^\"]+\"|[\w$]+))*)",
    re.IGNORECASE | re.DOTALL,
)


def _insert_target(sql: str) -> str:
    m = _INSERT_TARGET.match(sql)
    if not m:
        return ""
    last = re.findall(r'"[^"]+"|[\w$]+', m.group(1))[-1]
    return last[1:-1] if last.startswith('"') else last.upper()


class _LtzColumns:
    """Which result columns are TIMESTAMP_LTZ: DuckDB has one TIMESTAMPTZ type for LTZ and TZ.

    Columns declared TIMESTAMP_LTZ in a CREATE TABLE are remembered per table name; a query reading
    one table reports those columns (by output name) as LTZ, as does a projection cast to TIMESTAMP_LTZ.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, set[str]] = {}
        self._shapes = _Lru(1024)  # per SQL text: parsing a long query costs tens of milliseconds

    @staticmethod
    def _parse(sql: str) -> Any:
        import sqlglot

        try:
            return sqlglot.parse_one(sql, read="snowflake")
        except Exception:
            return None

    def note_ddl(self, sql: str) -> None:
        from sqlglot import exp

        if not _DDL_HEAD.search(sql[:500]):
            return
        tree = self._parse(sql)
        if isinstance(tree, exp.Create) and str(tree.args.get("kind") or "").upper() == "TABLE":
            schema = tree.this
            if isinstance(schema, exp.Schema) and isinstance(schema.this, exp.Table):
                cols = {
                    c.name.upper()
                    for c in schema.expressions
                    if isinstance(c, exp.ColumnDef)
                    and c.args.get("kind") is not None
                    and c.args["kind"].this == exp.DataType.Type.TIMESTAMPLTZ
                }
                with self._lock:
                    self._tables[schema.this.name.upper()] = cols
        elif isinstance(tree, exp.Drop) and isinstance(tree.this, exp.Table):
            with self._lock:
                self._tables.pop(tree.this.name.upper(), None)

    def for_query(self, sql: str) -> tuple[set[str], str]:
        """(names of the result's LTZ columns, the one table the query reads or "")."""
        shape = self._shapes.get(sql)
        if shape is None:
            shape = self._shape(sql)
            self._shapes.put(sql, shape)
        single, cast_ltz = shape
        found = set(cast_ltz)
        if single:
            with self._lock:
                found |= self._tables.get(single, set())
        return found, single

    def _shape(self, sql: str) -> tuple[str, frozenset[str]]:
        """What the text alone says: the one table it reads ("" if not one) and its projections cast to LTZ."""
        from sqlglot import exp

        tree = self._parse(sql)
        if not isinstance(tree, exp.Query):
            return "", frozenset()
        tables = {t.name.upper() for t in tree.find_all(exp.Table)}
        single = next(iter(tables)) if len(tables) == 1 else ""
        cast_ltz = set()
        for projection in getattr(tree, "selects", []):
            inner = projection.unalias()
            if isinstance(inner, (exp.Cast, exp.TryCast)) and inner.to.this == exp.DataType.Type.TIMESTAMPLTZ:
                cast_ltz.add(projection.alias_or_name.upper())
        return single, frozenset(cast_ltz)


@dataclass
class _Job:
    id: str
    token: str
    request_id: str | None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    final_query_id: str | None = None


class _Faithful:
    """Installs faithful mode into fakesnow's server module and app."""

    def __init__(self, fs: Any, settings: FaithfulSettings, stats: _Stats) -> None:
        self.fs = fs
        self.settings = settings
        self.stats = stats
        self.details = _TimestampDetails()
        self.ltz = _LtzColumns()
        self.jobs: OrderedDict[str, _Job] = OrderedDict()
        self.by_request: dict[tuple[str, str], _Job] = {}
        self.chunks: OrderedDict[str, tuple[str, list[bytes]]] = OrderedDict()
        self.chunk_bytes = 0
        self.chunk_budget = 768 * 1024 * 1024
        self.lock = threading.Lock()
        self.delay_match = re.compile(settings.delay_match) if settings.delay_match else None
        self.original_query = fs.query_request
        self.original_to_sf = fs.to_sf

    # -- installation -------------------------------------------------------------------------
    def install(self) -> None:
        import fakesnow.converter as fconv
        from starlette.routing import Route

        def exact_from_datetime(s: str):  # type: ignore[no-untyped-def]
            import datetime as dt

            ns = int(s)
            return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)

        # fakesnow converts bound nanoseconds through a float, which can shift the microsecond
        fconv.from_datetime = exact_from_datetime

        def capturing_to_sf(table: Any, rowtype: list[dict[str, Any]]) -> Any:
            captured = _capture.get()
            if captured is None:
                return self.original_to_sf(table, rowtype)
            captured["table"] = table
            captured["rowtype"] = rowtype
            return self.original_to_sf(table.slice(0, 0), rowtype)

        self.fs.to_sf = capturing_to_sf
        _replace_endpoint(self.fs.app, "/queries/v1/query-request", self.query_request)
        _replace_endpoint(self.fs.app, "/queries/v1/abort-request", self.abort_request)
        routes = self.fs.app.router.routes
        routes.append(Route("/queries/{qid}/result", self.query_result, methods=["GET"]))
        routes.append(Route("/standin/v1/chunks/{key}/{index:int}", self.chunk, methods=["GET"]))

    # -- query lifecycle ------------------------------------------------------------------------
    @staticmethod
    def _token(request: Any) -> str | None:
        auth = request.headers.get("Authorization") or ""
        return auth[17:-1] if auth.startswith('Snowflake Token="') else None

    def _delay(self, sql: str) -> float:
        m = _DELAY_MARK.search(sql)
        if m:
            return float(m.group(1))
        if self.settings.query_delay > 0 and (self.delay_match is None or self.delay_match.search(sql)):
            return self.settings.query_delay
        return 0.0

    def _remember(self, job: _Job) -> None:
        self.jobs[job.id] = job
        if job.request_id:
            self.by_request[(job.token, job.request_id)] = job
        while len(self.jobs) > 512:
            _, old = self.jobs.popitem(last=False)
            if old.request_id:
                self.by_request.pop((old.token, old.request_id), None)

    async def query_request(self, request: Any) -> Any:
        token = self._token(request)
        if token is None or token not in self.fs.sessions:
            return await self.original_query(request)  # fakesnow answers the auth error
        body = _json_body(await request.body(), request.headers)
        request_id = request.query_params.get("requestId")
        self.stats.bump("queries")
        existing = self.by_request.get((token, request_id)) if request_id else None
        if existing is not None:
            # a retried POST (e.g. after a socket timeout) attaches to the running query, as Snowflake does
            self.stats.bump("retries_attached")
            return await self._answer(existing)
        job = _Job(id=str(uuid.uuid4()), token=token, request_id=request_id)
        self._remember(job)
        job.task = asyncio.create_task(self._run(job, request, body))
        return await self._answer(job)

    async def _run(self, job: _Job, request: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from starlette.concurrency import run_in_threadpool

        sql = str(body.get("sqlText") or "")
        delay = self._delay(sql)
        if delay > 0:
            self.stats.bump("delayed_queries")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.cancel.wait(), timeout=delay)
        if job.cancel.is_set():
            return await self._cancelled(job)
        scope = _insert_target(sql)
        self.details.note_sql(sql, scope)
        self.details.note_bindings(body.get("bindings"), scope)
        captured: dict[str, Any] = {}
        reset = _capture.set(captured)
        try:
            response = await self.original_query(request)
        finally:
            _capture.reset(reset)
        if job.cancel.is_set():
            return await self._cancelled(job)
        payload = json.loads(response.body)
        if payload.get("success"):
            await run_in_threadpool(self.ltz.note_ddl, sql)
            data = payload.get("data") or {}
            job.final_query_id = data.get("queryId")
            if job.final_query_id:
                self.jobs[job.final_query_id] = job
            if "table" in captured:
                base = f"{request.url.scheme}://{request.url.netloc}"
                payload = await run_in_threadpool(self._rewrite, payload, captured, sql, base)
        return response.status_code, payload

    async def _cancelled(self, job: _Job) -> tuple[int, dict[str, Any]]:
        self.stats.bump("cancelled")
        # let the client's abort-request answer arrive first, so its timer is marked as executed
        await asyncio.sleep(0.25)
        return 200, {
            "data": {"errorCode": "000604", "sqlState": "57014", "queryId": job.id, "internalError": False},
            "code": "000604",
            "message": _CANCELLED_MESSAGE,
            "success": False,
            "headers": None,
        }

    async def _answer(self, job: _Job) -> Any:
        from starlette.responses import JSONResponse

        assert job.task is not None
        wait = self.settings.progress_after
        await asyncio.wait({job.task}, timeout=wait if wait > 0 else None)
        if not job.task.done():
            self.stats.bump("in_progress_answers")
            return JSONResponse(
                {
                    "data": {
                        "queryId": job.id,
                        "getResultUrl": f"/queries/{job.id}/result",
                        "queryAbortsAfterSecs": 300,
                        "progressDesc": None,
                    },
                    "code": "333333",
                    "message": "Query execution in progress.",
                    "success": True,
                }
            )
        try:
            status, payload = job.task.result()
        except Exception as exc:  # fakesnow raised: same shape as its own 500 answer
            return JSONResponse(
                {"data": None, "code": "261000", "message": f"{type(exc).__name__}: {exc}", "success": False},
                status_code=500,
            )
        return JSONResponse(payload, status_code=status)

    async def query_result(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        token = self._token(request)
        qid = request.path_params["qid"]
        job = self.jobs.get(qid)
        if token is None or job is None or job.token != token:
            return JSONResponse(
                {
                    "data": {"errorCode": "000709", "sqlState": "02000", "queryId": qid},
                    "code": "000709",
                    "message": f"Statement {qid} not found",
                    "success": False,
                }
            )
        self.stats.bump("result_polls")
        return await self._answer(job)

    async def abort_request(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        token = self._token(request)
        body = _json_body(await request.body(), request.headers)
        self.stats.bump("abort_requests")
        job = self.by_request.get((token or "", str(body.get("requestId") or "")))
        if job is not None and job.task is not None and not job.task.done():
            job.cancel.set()
        return JSONResponse({"data": None, "code": None, "message": None, "success": True})

    async def chunk(self, request: Any) -> Any:
        from starlette.responses import Response

        key = request.path_params["key"]
        index = request.path_params["index"]
        with self.lock:
            entry = self.chunks.get(key)
        if entry is None or not 0 <= index < len(entry[1]):
            self.stats.bump("chunks_missing")
            return Response(b"<Error><Code>NoSuchKey</Code></Error>", status_code=404, media_type="application/xml")
        qrmk, blobs = entry
        if request.headers.get(_SSE_C_KEY) != qrmk:
            # as S3 refuses an SSE-C object without the customer key
            self.stats.bump("chunks_refused")
            return Response(b"<Error><Code>AccessDenied</Code></Error>", status_code=403, media_type="application/xml")
        self.stats.bump("chunks_served")
        return Response(blobs[index], media_type="binary/octet-stream")

    def _store_chunks(self, blobs: list[bytes]) -> tuple[str, str]:
        key = secrets.token_hex(16)
        qrmk = base64.b64encode(secrets.token_bytes(32)).decode()
        size = sum(len(b) for b in blobs)
        with self.lock:
            self.chunks[key] = (qrmk, blobs)
            self.chunk_bytes += size
            while self.chunk_bytes > self.chunk_budget and len(self.chunks) > 1:
                _, (_, old) = self.chunks.popitem(last=False)
                self.chunk_bytes -= sum(len(b) for b in old)
        return key, qrmk

    # -- result conversion ----------------------------------------------------------------------
    def _rewrite(self, payload: dict[str, Any], captured: dict[str, Any], sql: str, base: str) -> dict[str, Any]:
        table = captured["table"]
        rowtype = [dict(c) for c in captured["rowtype"]]
        ltz, scope = self.ltz.for_query(sql)
        for col in rowtype:
            if str(col.get("type")).lower() == "timestamp_tz" and str(col.get("name", "")).upper() in ltz:
                col["type"] = "timestamp_ltz"
        streams, counts = self.to_streams(table, rowtype, scope)
        data = payload["data"]
        data["rowtype"] = rowtype
        data["queryResultFormat"] = "arrow"
        data["rowsetBase64"] = base64.b64encode(streams[0]).decode() if streams else ""
        data["returned"] = counts[0] if counts else 0
        if len(streams) > 1:
            blobs = [gzip.compress(s, compresslevel=1) for s in streams[1:]]
            key, qrmk = self._store_chunks(blobs)
            data["chunks"] = [
                {
                    "url": f"{base}/standin/v1/chunks/{key}/{i}",
                    "rowCount": counts[i + 1],
                    "uncompressedSize": len(streams[i + 1]),
                    "compressedSize": len(blob),
                }
                for i, blob in enumerate(blobs)
            ]
            data["qrmk"] = qrmk
            self.stats.bump("chunked_results")
        return payload

    def to_streams(self, table: Any, rowtype: list[dict[str, Any]], scope: str = "") -> tuple[list[bytes], list[int]]:
        """The result as Arrow IPC streams (first = inline chunk) and the row count of each."""
        s = self.settings
        n = table.num_rows
        bounds: list[tuple[int, int]] = []
        start, size = 0, max(1, s.first_chunk_rows)
        while start < n or not bounds:
            length = min(size, n - start)
            bounds.append((start, length))
            start += length
            size = max(1, s.chunk_rows)
        streams, counts = [], []
        for start, length in bounds:
            chunk = table.slice(start, length)
            streams.append(self.chunk_stream(chunk, rowtype, scope))
            counts.append(length)
        return streams, counts

    def chunk_stream(self, chunk: Any, rowtype: list[dict[str, Any]], scope: str = "") -> bytes:
        import pyarrow as pa

        arrays: list[Any] = [None] * chunk.num_columns
        schema_fields: list[Any] = [None] * chunk.num_columns
        passthrough: list[int] = []
        for i, col in enumerate(rowtype):
            kind = str(col.get("type", "")).lower()
            column = chunk.column(i).combine_chunks()
            name = chunk.schema.field(i).name
            converted = None
            if kind == "fixed":
                converted = fixed_column(column, col)
            elif kind in ("timestamp_ntz", "timestamp_ltz", "timestamp_tz") and pa.types.is_timestamp(column.type):
                converted = timestamp_column(column, kind, self.details, scope)
            if converted is None:
                passthrough.append(i)
                continue
            array, metadata = converted
            arrays[i] = array
            schema_fields[i] = pa.field(name, array.type, nullable=True, metadata=metadata)
        if passthrough:
            sub = pa.Table.from_arrays(
                [chunk.column(i) for i in passthrough], names=[chunk.schema.field(i).name for i in passthrough]
            )
            converted_sub = self.original_to_sf(sub, [rowtype[i] for i in passthrough])
            for j, i in enumerate(passthrough):
                f = converted_sub.schema.field(j)
                meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
                for key in ("byteLength",):
                    if rowtype[i].get(key) is not None:
                        meta.setdefault(key, str(rowtype[i][key]))
                arrays[i] = converted_sub.column(j).combine_chunks()
                schema_fields[i] = pa.field(f.name, arrays[i].type, nullable=True, metadata=meta)
        schema = pa.schema(schema_fields)
        out = pa.Table.from_arrays(arrays, schema=schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(out, max_chunksize=max(1, self.settings.batch_rows))
        return sink.getvalue().to_pybytes()


def _valid(array: Any) -> Any:
    import numpy as np

    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


_INT_WIDTHS = (
    (8, "SB1", 1),
    (16, "SB2", 2),
    (32, "SB4", 4),
    (64, "SB8", 8),
)


def fixed_column(array: Any, col: Mapping[str, Any]) -> tuple[Any, dict[str, str]] | None:
    """NUMBER as Snowflake sends it: the chunk's unscaled values in the narrowest signed int, else decimal128."""
    import numpy as np
    import pyarrow as pa

    valid = _valid(array)
    t = array.type
    scale = int(col.get("scale") or 0)
    precision = int(col.get("precision") or 38)
    unscaled = None
    if pa.types.is_integer(t):
        if t == pa.uint64():
            raw = array.fill_null(0).to_numpy(zero_copy_only=False)
            if (raw > np.iinfo(np.int64).max).any():
                unscaled = None
                array = array.cast(pa.decimal128(38, 0))
            else:
                unscaled = raw.astype(np.int64)
        else:
            unscaled = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    elif pa.types.is_decimal(t) and t.bit_width == 128:
        scale = t.scale
        if len(array) == 0:
            words = np.zeros(0, dtype=np.int64)
        else:
            words = np.frombuffer(array.buffers()[1], dtype="<i8")[2 * array.offset : 2 * (array.offset + len(array))]
        low, high = words[0::2], words[1::2]
        if bool(np.all((high == (low >> 63)) | ~valid)):
            unscaled = np.where(valid, low, 0)
    else:
        return None
    metadata = {
        "logicalType": "FIXED",
        "precision": str(precision),
        "scale": str(scale),
        "charLength": "0",
    }
    if unscaled is None:
        target = pa.decimal128(max(precision, 1), scale)
        with contextlib.suppress(pa.ArrowInvalid):
            array = array.cast(target)
        metadata.update(physicalType="SB16", byteLength="16", precision=str(array.type.precision))
        return array, metadata
    lo = int(unscaled[valid].min()) if valid.any() else 0
    hi = int(unscaled[valid].max()) if valid.any() else 0
    bits, physical, nbytes = next(w for w in _INT_WIDTHS if -(1 << (w[0] - 1)) <= lo and hi < (1 << (w[0] - 1)))
    np_type = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}[bits]
    out = pa.array(unscaled.astype(np_type), mask=None if valid.all() else ~valid)
    metadata.update(physicalType=physical, byteLength=str(nbytes))
    return out, metadata


def timestamp_column(
    array: Any, kind: str, details: _TimestampDetails | None, scope: str = ""
) -> tuple[Any, dict[str, str]]:
    """TIMESTAMP_NTZ/LTZ as struct {epoch, fraction}; TIMESTAMP_TZ as struct {epoch, fraction, timezone} (scale 9)."""
    import numpy as np
    import pyarrow as pa

    valid = _valid(array)
    unit = array.type.unit
    raw = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    epoch = np.floor_divide(raw, per_second)
    fraction = (raw - epoch * per_second) * (1_000_000_000 // per_second)
    offsets = np.zeros(len(array), dtype=np.int64)
    if details is not None and unit == "us":
        rem, offset = details.lookup("ntz" if kind == "timestamp_ntz" else "tz", raw, valid, scope)
        if rem is not None:
            fraction = fraction + rem
            if kind == "timestamp_tz":
                known = offset != np.iinfo(np.int32).min
                offsets = np.where(known, offset, 0)
    epoch = np.where(valid, epoch, 0)
    fraction = np.where(valid, fraction, 0)
    children = [pa.array(epoch, pa.int64()), pa.array(fraction.astype(np.int32), pa.int32())]
    child_fields = [pa.field("epoch", pa.int64(), nullable=False), pa.field("fraction", pa.int32(), nullable=False)]
    if kind == "timestamp_tz":
        children.append(pa.array(np.where(valid, offsets + 1440, 0).astype(np.int32), pa.int32()))
        child_fields.append(pa.field("timezone", pa.int32(), nullable=False))
    mask = None if valid.all() else pa.array(~valid)
    struct = pa.StructArray.from_arrays(children, fields=child_fields, mask=mask)
    metadata = {
        "logicalType": kind.upper(),
        "precision": "0",
        "scale": "9",
        "physicalType": "SB16",
        "charLength": "0",
        "byteLength": "16",
    }
    return struct, metadata


# --------------------------------------------------------------------------------------------
# Process management (public API)
# --------------------------------------------------------------------------------------------


def serve(
    port: int,
    password: str,
    port_file: Path | None,
    faithful: bool | None = None,
    settings: FaithfulSettings | None = None,
) -> None:
    import uvicorn

    faithful = faithful_from_env() if faithful is None else faithful
    app = _patch_fakesnow(STANDIN_USER, password, faithful=faithful, settings=settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    if port_file:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(sock.getsockname()[1]))
        tmp.rename(port_file)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


@dataclass(frozen=True)
class StandinSnowflake:
    """Where a running stand-in listens, and how to log in to it."""

    host: str
    port: int
    user: str
    password: str
    account: str = STANDIN_ACCOUNT
    protocol: str = "http"
    faithful: bool = False

    def connect_kwargs(self, **extra: object) -> dict[str, object]:
        return {
            "account": self.account,
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
            **extra,
        }

    def stats(self) -> dict[str, Any]:
        """What the stand-in saw (see /standin/v1/stats)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.protocol}://{self.host}:{self.port}/standin/v1/stats", timeout=10) as r:
            return json.loads(r.read())


def _child_command(port: int, port_file: Path) -> list[str]:
    return [sys.executable, "-m", __name__, "--port", str(port), "--port-file", str(port_file)]


def start(
    password: str,
    workdir: Path,
    port: int = 0,
    *,
    faithful: bool | None = None,
    settings: FaithfulSettings | None = None,
) -> tuple[subprocess.Popen[bytes], StandinSnowflake]:
    """Start the stand-in in a child process; return the process and where it listens.

    ``faithful=None`` follows ``CM_DATACOPY_STANDIN_FAITHFUL``; ``settings`` (faithful mode only)
    override the ``CM_DATACOPY_STANDIN_*`` variables for this server.
    """
    faithful = faithful_from_env() if faithful is None else faithful
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"fakesnow-{os.getpid()}-{time.monotonic_ns()}.port"
    log = open(workdir / "fakesnow.log", "ab")  # noqa: SIM115 - owned by the child
    env = {**os.environ, PASSWORD_ENV: password, FAITHFUL_ENV: "1" if faithful else "0"}
    if settings is not None:
        env.update(settings.to_env())
    command = _child_command(port, port_file)
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the Snowflake stand-in did not start; see {workdir / 'fakesnow.log'}")
        time.sleep(0.05)
    bound = int(port_file.read_text())
    port_file.unlink()
    _wait_listening(bound, proc)
    return proc, StandinSnowflake("127.0.0.1", bound, STANDIN_USER, password, faithful=faithful)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("the Snowflake stand-in is not answering")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running(
    password: str,
    workdir: Path,
    *,
    faithful: bool | None = None,
    settings: FaithfulSettings | None = None,
) -> Iterator[StandinSnowflake]:
    proc, where = start(password, workdir, faithful=faithful, settings=settings)
    try:
        yield where
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument(
        "--faithful",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"send results as real Snowflake does (default: yes unless ${FAITHFUL_ENV}=0)",
    )
    args = parser.parse_args()
    password = os.environ.get(PASSWORD_ENV, "standin")
    serve(args.port, password, args.port_file, faithful=args.faithful)


if __name__ == "__main__":
    main()
