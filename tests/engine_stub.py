"""A stand-in for the execution engine: a real HTTP server on loopback that records what it gets."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EngineStub:
    """POST /execute recorder; `mode` = ok | reject | fail | slow, `delay_s` for slow."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.connections = 0
        self.mode = "ok"
        self.delay_s = 0.0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with stub.lock:
                    stub.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with stub.lock:
                    stub.orders.append({"path": self.path, "idempotency_key": self.headers.get("Idempotency-Key"),
                                        **body})
                    mode, delay = stub.mode, stub.delay_s
                if mode == "slow":
                    time.sleep(delay)
                status = {"ok": 202, "reject": 409, "fail": 500, "slow": 202}[mode]
                reply = json.dumps({"accepted": status == 202}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ids(self) -> list[str]:
        with self.lock:
            return [order["opportunity_id"] for order in self.orders]

    def __enter__(self) -> "EngineStub":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
