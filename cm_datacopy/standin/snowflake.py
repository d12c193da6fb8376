"""A Snowflake stand-in: fakesnow in server mode, in its own process.

The real ``snowflake-connector-python`` talks to it over HTTP on loopback, so the product's own
Snowflake code path runs. Two things are added to fakesnow here:

* NULL timestamps survive (fakesnow 0.12 server mode turns them into 1970-01-01); a stand-in that
  loses NULLs would hide real bugs.
* ``CURRENT_VERSION()`` says it is the stand-in (``10.0.0-cm-datacopy-standin``).
* The login checks the user and password, so a wrong password is refused as Snowflake would
  refuse it (fakesnow accepts anything).

Run it with ``python -m cm_datacopy.standin.snowflake --port 0 --port-file F``; stop it with SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STANDIN_USER = "cm_datacopy"
STANDIN_ACCOUNT = "standin"
STANDIN_VERSION_TAG = "cm-datacopy-standin"


def _patch_fakesnow(user: str, password: str) -> object:
    """Return fakesnow's ASGI app with the NULL-timestamp fix and a password check."""
    import gzip

    import fakesnow.arrow as fa
    import fakesnow.server as fs
    import pyarrow as pa
    from starlette.responses import JSONResponse

    original_struct = fa.timestamp_to_sf_struct

    def keep_nulls(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        ts = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
        struct = original_struct(ts.fill_null(0))
        return pa.StructArray.from_arrays(struct.flatten(), fields=list(struct.type), mask=ts.is_null())

    fa.timestamp_to_sf_struct = keep_nulls

    # Say what the server is: cm_datacopy picks the SQL dialect of a few functions by the version.
    import fakesnow.transforms.transforms as ft

    ft.SERVER_VERSION = f"{ft.SERVER_VERSION}-{STANDIN_VERSION_TAG}"

    original_login = fs.login_request

    async def checked_login(request):  # type: ignore[no-untyped-def]
        body = await request.body()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        data = json.loads(body).get("data", {})
        if data.get("LOGIN_NAME", "").lower() != user.lower() or data.get("PASSWORD") != password:
            return JSONResponse(
                {
                    "data": {"errorCode": "390100", "sqlState": "08004"},
                    "code": "390100",
                    "message": "Incorrect username or password was specified.",
                    "success": False,
                }
            )
        return await original_login(request)

    for route in fs.app.routes:
        if getattr(route, "endpoint", None) is original_login:
            route.endpoint = checked_login
            route.app = __import__("starlette.routing", fromlist=["request_response"]).request_response(checked_login)
    return fs.app


def serve(port: int, password: str, port_file: Path | None) -> None:
    import uvicorn

    app = _patch_fakesnow(STANDIN_USER, password)
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


def start(password: str, workdir: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], StandinSnowflake]:
    """Start the stand-in in a child process; return the process and where it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"fakesnow-{os.getpid()}-{time.monotonic_ns()}.port"
    log = open(workdir / "fakesnow.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "cm_datacopy.standin.snowflake", "--port", str(port), "--port-file", str(port_file)],
        env={**os.environ, "CM_DATACOPY_STANDIN_PASSWORD": password},
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
    return proc, StandinSnowflake("127.0.0.1", bound, STANDIN_USER, password)


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
def running(password: str, workdir: Path) -> Iterator[StandinSnowflake]:
    proc, where = start(password, workdir)
    try:
        yield where
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()
    password = os.environ.get("CM_DATACOPY_STANDIN_PASSWORD", "standin")
    serve(args.port, password, args.port_file)


if __name__ == "__main__":
    main()
