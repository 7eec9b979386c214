"""HTTP client of the execution engine: short timeouts, never a retry."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, NewConnectionError, ReadTimeoutError


@dataclass(frozen=True)
class EngineReply:
    """What became of one dispatch."""

    status: str  # dispatched | rejected | failed | timeout
    engine_status: int | None
    reason: str
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "reason": self.reason, "latency_ms": round(self.latency_ms, 3)}
        if self.engine_status is not None:
            body["engine_status"] = self.engine_status
        return body


class EngineClient:
    """POST {RUST_ENGINE_URL}/execute with the opportunity id as idempotency key."""

    def __init__(self, base_url: str, connect_timeout_s: float, read_timeout_s: float) -> None:
        self.url = f"{base_url}/execute"
        # retries=False: a request whose outcome is unknown must never be sent again.
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=1, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        )

    def execute(self, order: dict[str, Any]) -> EngineReply:
        """Send one order; classify the outcome without retrying."""
        started = time.perf_counter()

        def reply(status: str, reason: str, code: int | None = None) -> EngineReply:
            return EngineReply(status, code, reason, (time.perf_counter() - started) * 1000.0)

        try:
            response = self._pool.request(
                "POST", self.url, body=orjson.dumps(order),
                headers={"Content-Type": "application/json", "Idempotency-Key": order["opportunity_id"]},
            )
        except (ReadTimeoutError, TimeoutError):
            return reply("timeout", "no answer within AI_DISPATCH_TIMEOUT_S; outcome unknown, not retried")
        except (ConnectTimeoutError, NewConnectionError) as error:
            return reply("failed", f"engine unreachable: {type(error).__name__}")
        except MaxRetryError as error:  # urllib3 wraps the cause even with retries=False
            if isinstance(error.reason, ReadTimeoutError):
                return reply("timeout", "no answer within AI_DISPATCH_TIMEOUT_S; outcome unknown, not retried")
            return reply("failed", f"engine unreachable: {type(error.reason).__name__}")
        except HTTPError as error:
            return reply("failed", f"engine connection failed: {type(error).__name__}")
        if 200 <= response.status < 300:
            return reply("dispatched", "accepted by the execution engine", response.status)
        if 400 <= response.status < 500:
            return reply("rejected", "refused by the execution engine", response.status)
        return reply("failed", "execution engine error", response.status)
