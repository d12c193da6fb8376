"""One Lambda execution environment, as a child process of ``FakeLambda``: imports the handler once and
serves invocations one after another, so module state survives between them as in a warm Lambda.

``python -u lambda_sandbox.py <module.function>``; requests arrive on standard input, one JSON line
each (``request_id``, ``event_path``, ``out_path``, ``log_path``, ``deadline``, ``function_name``); the
reply ``{"request_id", "ok"}`` goes to the original standard output, kept on a private descriptor. For
each invocation descriptors 1 and 2 point at that invocation's log file, as CloudWatch collects them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any


class LambdaContext:
    """The parts of Lambda's context object a handler uses."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.aws_request_id = request["request_id"]
        self.function_name = request["function_name"]
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = "2048"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{request['function_name']}"
        self.log_group_name = f"/aws/lambda/{request['function_name']}"
        self.log_stream_name = "sandbox"
        self._deadline = float(request["deadline"])

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _log_to(path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main() -> None:
    module_name, _, function_name = sys.argv[1].rpartition(".")
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    handler = None
    for line in sys.stdin:
        request = json.loads(line)
        _log_to(request["log_path"])
        ok = True
        try:
            if handler is None:  # the init phase, on the first invocation
                handler = getattr(importlib.import_module(module_name), function_name)
            with open(request["event_path"], encoding="utf-8") as f:
                event = json.load(f)
            payload: Any = handler(event, LambdaContext(request))
        except Exception as exc:  # what Lambda's Python runtime does with an unhandled exception
            ok = False
            payload = {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "requestId": request["request_id"],
                "stackTrace": traceback.format_tb(exc.__traceback__),
            }
            print(f"[ERROR] {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        with open(request["out_path"], "w", encoding="utf-8") as f:
            json.dump(payload, f, default=str)
        replies.write(json.dumps({"request_id": request["request_id"], "ok": ok}) + "\n")


if __name__ == "__main__":
    main()
