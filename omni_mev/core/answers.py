"""The answers a handler gives, whatever the transport, and the one wait for work running elsewhere."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from omni_mev.errors import INTERNAL_ERROR, OmniMevError
from omni_mev.jsonio import dumps

log = logging.getLogger(__name__)
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Answer:
    """An answer with a status other than 200, extra headers, or a body already encoded (bytes, sent as they are
    with `content_type`)."""

    status: int
    body: dict[str, Any] | bytes
    headers: Mapping[str, str] | None = None
    content_type: str = JSON_TYPE

    def encoded(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else dumps(self.body)


Body = dict[str, Any]
Reply = Body | Answer


@dataclass(frozen=True)
class Later:
    """An answer that waits on work running elsewhere (a dispatch's outcome, a ledger's commit): `render()` once
    `futures` are done, or at `deadline` (time.monotonic) at the latest.

    Each transport waits without holding what serves others: the worker parks
    the connection (omni_mev.deferred), the stream server awaits `settled()`;
    a server that can do neither waits in `result()`.
    """

    futures: Sequence[Future[Any]]
    deadline: float
    render: Callable[[], Reply]

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def ready(self) -> bool:
        """Whether the answer can be rendered now without waiting."""
        return time.monotonic() >= self.deadline or all(future.done() for future in self.futures)

    def wait(self) -> None:
        """Wait here (blocking) for the work, up to the deadline."""
        wait(self.futures, timeout=self.remaining_s())

    def result(self) -> Reply:
        """The answer, once the work is done or the deadline has passed, waiting here (blocking) for it."""
        self.wait()
        return self.render()

    async def settled(self) -> Reply:
        """The answer, awaiting the work up to the deadline: the event loop keeps serving meanwhile."""
        await asyncio.wait([asyncio.wrap_future(future) for future in self.futures], timeout=self.remaining_s())
        return self.render()


# How a route shapes its errors: the API's {"error", "message"} or the Open Inference Protocol's {"error"}.
ErrorShape = Callable[[OmniMevError], Body]


def error_body(error: OmniMevError) -> Body:
    """The API's error shape: {"error", "message"[, "fields"]}."""
    return error.to_dict()


def error_status_and_body(error: BaseException, shape: ErrorShape = error_body) -> tuple[int, Body]:
    """An error as (status, body): a domain error as itself in `shape`, anything else a logged 500 whose body says
    nothing of the cause."""
    if isinstance(error, OmniMevError):
        return error.status, shape(error)
    log.error("unhandled error", exc_info=error)
    return 500, dict(INTERNAL_ERROR)
