"""A stand-in for the execution engine that keeps its contract (docs/trading.md): a real HTTP server on loopback.

- `Idempotency-Key` is the percent-encoded opportunity id; a key is executed
  at most once, and a repeated key gets the first answer again (a replay),
  never a second execution: this is how omni-mev reconciles an order whose
  answer it never got;
- an order received past its `expires_at` is refused with 410 and never
  executed (so a key it never saw, asked after the deadline, is "never
  executed");
- `mode` sets the answer to new keys: ok (202), reject (409), fail (500),
  crash (the order is executed, then the connection is closed without an
  answer: the engine died before it could reply, and answers replays once
  back), lost (the connection is closed without an answer and nothing is
  executed: the engine died before it could act); `delay_s` delays every
  answer to a new key.

It records every call (`orders`), every execution (`executed`) and every
replayed key (`replays`).
"""
from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWERS = {"ok": 202, "reject": 409, "fail": 500}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a batch's orders arrive at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that stopped waiting (its deadline passed, or it was killed) is part of the tests."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class EngineStub:
    """POST /execute, recorded; see the module docstring for its behaviour."""

    def __init__(self, mode: str = "ok", delay_s: float = 0.0, address: str = "127.0.0.1") -> None:
        self.orders: list[dict[str, Any]] = []
        self.executed: list[str] = []
        self.answers: dict[str, int] = {}
        self.replays: list[str] = []
        self.contract_violations: list[str] = []
        self.connections = 0
        self.mode = mode
        self.delay_s = delay_s
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with stub.lock:
                    stub.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                key = self.headers.get("Idempotency-Key")
                with stub.lock:
                    stub.orders.append({"path": self.path, "idempotency_key": key, "received_at": time.time(), **body})
                    mode, delay = stub.mode, stub.delay_s
                    if key is None or urllib.parse.unquote(key) != body.get("opportunity_id"):
                        stub.contract_violations.append(f"key {key!r} is not the id {body.get('opportunity_id')!r}")
                    status = stub.answers.get(key)
                    replay = status is not None
                    if replay:
                        stub.replays.append(body.get("opportunity_id"))
                    elif time.time() > body.get("expires_at", float("inf")):
                        status = stub.answers[key] = 410
                    elif mode != "lost":  # a new key: decide, and execute it if accepted
                        status = stub.answers[key] = ANSWERS.get(mode, 202)
                        if status == 202:
                            stub.executed.append(body["opportunity_id"])
                if delay and not replay:
                    time.sleep(delay)
                if mode in ("crash", "lost") and not replay and status != 410:
                    self.close_connection = True
                    self.connection.close()
                    return
                reply = json.dumps({"accepted": status == 202}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ids(self) -> list[str]:
        """The opportunity ids of every call, in order (a replayed key appears twice)."""
        with self.lock:
            return [order["opportunity_id"] for order in self.orders]

    def executions(self) -> list[str]:
        with self.lock:
            return list(self.executed)

    def __enter__(self) -> EngineStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
