"""botocore re-sends a synchronous invoke that outlives its read timeout; the dispatcher's client never does.

A small local HTTP endpoint plays Invoke: it answers after a delay and counts the requests it received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from cm_datacopy.config import LambdaCompute
from cm_datacopy.dagster_defs.compute.lambda_ import LambdaDispatcher, client_config

SETTINGS = LambdaCompute(function_name="f", region="us-east-1", timeout_seconds=900)


@pytest.fixture
def slow_invoke() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"posts": 0, "delay": 2.0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state["posts"] += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(state["delay"])
            body = json.dumps({"ok": True}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def wait_for_quiet(state: dict[str, Any]) -> None:
    """Long enough for any re-sent request to arrive (each re-send follows a 1 s read timeout)."""
    time.sleep(state["delay"] + 2)


def test_botocore_defaults_send_a_slow_invoke_again(slow_invoke):
    client = boto3.client("lambda", endpoint_url=slow_invoke["url"], config=Config(read_timeout=1))
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.invoke(FunctionName="f", Payload=b"{}")
    wait_for_quiet(slow_invoke)
    assert slow_invoke["posts"] > 1  # each copy of the invoke would run (and copy) on AWS


def test_the_dispatchers_client_sends_it_once(slow_invoke):
    ours = client_config(SETTINGS).merge(Config(read_timeout=1))  # the same retry settings, a short wait
    client = boto3.client("lambda", endpoint_url=slow_invoke["url"], config=ours)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.invoke(FunctionName="f", Payload=b"{}")
    wait_for_quiet(slow_invoke)
    assert slow_invoke["posts"] == 1


def test_the_dispatchers_client_waits_longer_than_the_function_runs(slow_invoke, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", slow_invoke["url"])
    client = LambdaDispatcher(SETTINGS).lambda_client
    config = client.meta.config
    assert config.read_timeout == 960 and config.connect_timeout == 10 and config.tcp_keepalive is True
    assert config.retries["total_max_attempts"] == 1
    assert json.loads(client.invoke(FunctionName="f", Payload=b"{}")["Payload"].read()) == {"ok": True}
    assert slow_invoke["posts"] == 1
