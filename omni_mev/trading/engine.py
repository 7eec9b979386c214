"""HTTP client of the execution engine: one POST per order, bounded by the order's deadline, never retried here.

The contract the engine must keep (docs/trading.md) is what makes a resend
after a crash safe: the engine executes an `Idempotency-Key` at most once and
answers a repeated key with its first answer, and it never executes an order
past its `expires_at`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote
from typing import Any

import orjson
import urllib3
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, MaxRetryError, NewConnectionError, ProtocolError,
                                ReadTimeoutError)

# Printable ASCII other than "%" travels as it is in the Idempotency-Key; every
# other character (non-ASCII, spaces, controls, "%") as %XX of its UTF-8 bytes.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if c != ord("%"))


def idempotency_key(opportunity_id: str) -> str:
    """The Idempotency-Key header value of an id: percent-encoded UTF-8, so that any JSON string is a valid
    header and `urllib.parse.unquote(key) == opportunity_id`; ordinary ids are unchanged."""
    return quote(opportunity_id, safe=_HEADER_SAFE)


@dataclass(frozen=True)
class EngineReply:
    """What became of one order: dispatched | rejected | failed; `known` is False when the order may have reached
    the engine but no answer came back (a timeout, a connection closed after the order was written)."""

    status: str
    engine_status: int | None
    reason: str
    latency_ms: float
    known: bool = True

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "reason": self.reason, "latency_ms": round(self.latency_ms, 3)}
        if self.engine_status is not None:
            body["engine_status"] = self.engine_status
        return body


class EngineClient:
    """POST {RUST_ENGINE_URL}/execute with the opportunity id as idempotency key."""

    def __init__(self, base_url: str, connect_timeout_s: float, pool_size: int) -> None:
        self.url = f"{base_url}/execute"
        self.connect_timeout_s = connect_timeout_s
        # retries=False: a request whose outcome is unknown is never sent again by the client itself.
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, block=False, retries=False)

    def execute(self, order: dict[str, Any], read_timeout_s: float) -> EngineReply:
        """Send one order and wait at most `read_timeout_s` for the answer; classify it without retrying."""
        started = time.perf_counter()

        def reply(status: str, reason: str, code: int | None = None, known: bool = True) -> EngineReply:
            return EngineReply(status, code, reason, (time.perf_counter() - started) * 1000.0, known)

        unknown = (f"no answer within {read_timeout_s:.3f} s, the order's deadline: outcome unknown, not resent; "
                   "the engine is asked by its Idempotency-Key afterwards")
        try:
            response = self._pool.request(
                "POST", self.url, body=orjson.dumps(order),
                headers={"Content-Type": "application/json",
                         "Idempotency-Key": idempotency_key(order["opportunity_id"])},
                timeout=urllib3.Timeout(connect=min(self.connect_timeout_s, read_timeout_s), read=read_timeout_s),
            )
        except (ReadTimeoutError, TimeoutError):
            return reply("failed", unknown, known=False)
        except (ConnectTimeoutError, NewConnectionError) as error:  # no connection: nothing was written
            return reply("failed", f"engine unreachable: {type(error).__name__}; not sent")
        except MaxRetryError as error:  # urllib3 wraps the cause even with retries=False
            if isinstance(error.reason, (ConnectTimeoutError, NewConnectionError)):
                return reply("failed", f"engine unreachable: {type(error.reason).__name__}; not sent")
            if isinstance(error.reason, ReadTimeoutError):
                return reply("failed", unknown, known=False)
            return reply("failed", f"engine connection failed: {type(error.reason).__name__}: outcome unknown",
                         known=False)
        except ProtocolError:
            return reply("failed", "the engine closed the connection without an answer: outcome unknown, not "
                                   "resent; the engine is asked by its Idempotency-Key afterwards", known=False)
        except HTTPError as error:
            return reply("failed", f"engine connection failed: {type(error).__name__}: outcome unknown",
                         known=False)
        if 200 <= response.status < 300:
            return reply("dispatched", "accepted by the execution engine", response.status)
        if 400 <= response.status < 500:
            return reply("rejected", "refused by the execution engine", response.status)
        return reply("failed", "execution engine error", response.status)
