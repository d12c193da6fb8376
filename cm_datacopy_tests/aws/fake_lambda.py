"""AWS Lambda's Invoke API on a local port, running our real handler in child processes.

The dispatcher's real boto3 client talks to it (``AWS_ENDPOINT_URL_LAMBDA``), with the request and
response shapes of the service: ``POST /2015-03-31/functions/<name>/invocations``, the event as the
body; the handler's return value as the body, ``X-Amz-Function-Error`` for a failure and, with
``X-Amz-Log-Type: Tail``, the last 4 KB of the invocation's log (START to REPORT) in
``X-Amz-Log-Result``.

What a function does, as on AWS: the handler gets the event and a context whose
``get_remaining_time_in_millis`` counts down to the function's timeout; an exception is
``FunctionError: Unhandled`` with ``errorType``/``errorMessage``; a process that exits is
``Runtime.ExitError``; at the timeout the environment is killed (``Sandbox.Timedout``). ``warm``
functions keep their environments between invocations (one invocation at a time each); others start
one per invocation. ``extension_log_bytes``: what a log-shipping extension writes after the handler
returned, before END/REPORT. Every request received is recorded (to show nothing was sent twice).
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HANDLER = "cm_datacopy.workers.lambda_handler.handler"
LOG_TAIL_BYTES = 4096
_SANDBOX = Path(__file__).with_name("lambda_sandbox.py")


@dataclass
class FakeFunction:
    timeout_seconds: float
    environment: dict[str, str]
    handler: str = HANDLER
    warm: bool = False
    extension_log_bytes: int = 0


@dataclass
class Invocation:
    function: str
    request_id: str
    event: dict[str, Any]
    pid: int = 0
    status: str = "running"  # ok | error | exit | timeout
    log: str = ""
    started: float = field(default_factory=time.time)


class _Sandbox:
    def __init__(self, fn: FakeFunction, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(_SANDBOX), fn.handler],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)

    def send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


class FakeLambda:
    def __init__(self, functions: dict[str, FakeFunction], base_env: dict[str, str]) -> None:
        self.functions = functions
        self.base_env = base_env
        self.invocations: list[Invocation] = []
        self._idle: dict[str, list[_Sandbox]] = {}
        self._all: list[_Sandbox] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeLambda:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            boxes = list(self._all)
        for box in boxes:
            box.kill()

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no invocation is running (an abandoned one may outlive its caller's read timeout)."""
        deadline = time.monotonic() + timeout
        while any(i.status == "running" for i in self.invocations):
            if time.monotonic() > deadline:
                raise TimeoutError("an invocation is still running")
            time.sleep(0.05)

    # ---- one invocation --------------------------------------------------------------------------

    def _sandbox(self, name: str, fn: FakeFunction) -> _Sandbox:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            while idle:
                box = idle.pop()
                if box.alive():
                    return box
        box = _Sandbox(fn, {**self.base_env, **fn.environment, "AWS_LAMBDA_FUNCTION_NAME": name})
        with self._lock:
            self._all.append(box)
        return box

    def invoke(self, name: str, body: bytes, tail: bool) -> tuple[dict[str, str], bytes]:
        fn = self.functions[name]
        request_id = str(uuid.uuid4())
        invocation = Invocation(name, request_id, json.loads(body or b"{}"))
        self.invocations.append(invocation)
        with tempfile.TemporaryDirectory(prefix="fake-lambda-") as tmp:
            event_path, out_path, log_path = (str(Path(tmp) / n) for n in ("event.json", "out.json", "log"))
            Path(event_path).write_bytes(body)
            Path(log_path).write_text(f"START RequestId: {request_id} Version: $LATEST\n")
            started = time.time()
            box = self._sandbox(name, fn)
            invocation.pid = box.proc.pid
            box.send(
                {
                    "request_id": request_id,
                    "event_path": event_path,
                    "out_path": out_path,
                    "log_path": log_path,
                    "deadline": started + fn.timeout_seconds,
                    "function_name": name,
                }
            )
            try:
                reply = box.replies.get(timeout=fn.timeout_seconds)
                status = "exit" if reply is None else ("ok" if reply["ok"] else "error")
            except queue.Empty:
                status = "timeout"
                box.kill()  # Lambda ends the environment at the timeout
            if fn.warm and status in ("ok", "error") and box.alive():
                with self._lock:
                    self._idle[name].append(box)
            elif status != "timeout":
                box.kill()
            with open(log_path, "a", encoding="utf-8") as log:
                if fn.extension_log_bytes:
                    line = "[extension] shipped a batch of telemetry records to the log store ........\n"
                    log.write(line * (fn.extension_log_bytes // len(line) + 1))
                if status == "timeout":
                    log.write(f"{request_id} Task timed out after {fn.timeout_seconds:.2f} seconds\n")
                millis = (time.time() - started) * 1000
                log.write(f"END RequestId: {request_id}\n")
                log.write(
                    f"REPORT RequestId: {request_id}\tDuration: {millis:.2f} ms\t"
                    f"Billed Duration: {int(millis) + 1} ms\tMemory Size: 2048 MB\tMax Memory Used: 180 MB\n"
                )
            full_log = Path(log_path).read_bytes()
            if status in ("ok", "error"):
                payload = Path(out_path).read_bytes()
            elif status == "exit":
                payload = json.dumps(
                    {"errorType": "Runtime.ExitError", "errorMessage": f"RequestId: {request_id} Error: Runtime exited"}
                ).encode()
            else:
                payload = json.dumps(
                    {
                        "errorType": "Sandbox.Timedout",
                        "errorMessage": f"RequestId: {request_id} Error: Task timed out after "
                        f"{fn.timeout_seconds:.2f} seconds",
                    }
                ).encode()
        invocation.log, invocation.status = full_log.decode("utf-8", "replace"), status
        headers = {"X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": request_id}
        if status != "ok":
            headers["X-Amz-Function-Error"] = "Unhandled"
        if tail:
            headers["X-Amz-Log-Result"] = base64.b64encode(full_log[-LOG_TAIL_BYTES:]).decode()
        return headers, payload

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("?")[0].split("/")
                name = urllib.parse.unquote(parts[3]) if len(parts) > 4 and parts[4] == "invocations" else ""
                if name not in fake.functions:
                    error = json.dumps({"Type": "User", "message": f"Function not found: {name}"}).encode()
                    self._send(404, {"x-amzn-ErrorType": "ResourceNotFoundException"}, error)
                    return
                tail = self.headers.get("X-Amz-Log-Type") == "Tail"
                headers, payload = fake.invoke(name, body, tail)
                self._send(200, headers, payload)

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in {**headers, "Content-Type": "application/json"}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
