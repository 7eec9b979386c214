"""A WSGI response that waits on work running elsewhere (a dispatch's outcome, a commit), without holding a worker.

A scoring request whose opportunity is being dispatched may wait a bounded
time for the engine's answer. Blocking the worker for it would make every
other request on that worker wait too: scoring must not wait on dispatch.
So the application answers such a request (a `Later`, omni_mev.core.answers)
with a `DeferredBody`: a WSGI body that knows the work it waits on and its
deadline, and that calls `start_response` only once it is rendered, with the
status, headers and length the answer decides then (an answer whose status
depends on the work, as /outcomes'). omni-mev's worker (omni_mev.workers)
parks the connection, serves others, and writes the response once the work
is done or the deadline has passed; it says so to the application by setting
PARKS (omni_mev.environ_keys) in the WSGI environ. Under any other WSGI
server the application waits for the work before it answers. Nothing here
knows HTTP frameworks or the trading code.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from omni_mev.core.answers import Later

# What a render gives: the status line, the headers (Content-Length among them) and the body.
Response = tuple[str, list[tuple[str, str]], bytes]


class DeferredBody:
    """A WSGI body whose response is rendered, and started (`start_response`, once, with its final status), when
    the Later it waits on is ready."""

    def __init__(self, later: Later, render: Callable[[], Response], start_response: Callable[..., Any]) -> None:
        self.later = later
        self._render = render
        self._start_response = start_response
        self._content: bytes | None = None

    @property
    def deadline(self) -> float:
        return self.later.deadline

    def ready(self) -> bool:
        """Whether the response can be rendered now without waiting."""
        return self.later.ready()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from another thread) as each piece of work completes."""
        for future in self.later.futures:
            future.add_done_callback(lambda _: callback())

    def content(self) -> bytes:
        """The body, rendered once with whatever is done by now; the response is started with it."""
        if self._content is None:
            status, headers, self._content = self._render()
            self._start_response(status, headers)
        return self._content

    def __iter__(self) -> Iterator[bytes]:
        """For servers that do not park: wait here, then yield the body."""
        self.later.wait()
        yield self.content()
