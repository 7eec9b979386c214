"""Answers that wait on work running elsewhere (a dispatch's outcome), without holding a worker.

A scoring request whose opportunity is being dispatched may wait a bounded
time for the engine's answer. Blocking the worker for it would make every
other request on that worker wait too: scoring must not wait on dispatch.
So the application answers with a `DeferredBody`, a WSGI body that knows the
futures it waits on and its deadline. omni-mev's worker (omni_mev.workers)
parks the connection, serves others, and writes the body once the futures are
done or the deadline has passed. The render may decide the status and add
headers (an answer whose status depends on the work, as /outcomes'): the
worker writes the status line only with the body. It says so to the
application by setting PARKS (omni_mev.environ_keys) in the WSGI environ; under any other WSGI server
the application waits for the work before it answers. Nothing here knows HTTP
frameworks or the trading code.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from omni_mev.core.answers import Later


@dataclass(frozen=True)
class Rendered:
    """A rendered answer that decides its own status line and extra headers."""

    status: str
    content: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class DeferredBody:
    """A response body rendered by `render` once the answer it waits on (a Later) is ready."""

    def __init__(self, later: Later, render: Callable[[], bytes | Rendered]) -> None:
        self.later = later
        self._render = render
        self._content: bytes | None = None
        self.status: str | None = None  # set when the render decided it
        self.headers: list[tuple[str, str]] = []

    @property
    def deadline(self) -> float:
        return self.later.deadline

    def ready(self) -> bool:
        """Whether the body can be rendered now without waiting."""
        return self.later.ready()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from another thread) as each future completes."""
        for future in self.later.futures:
            future.add_done_callback(lambda _: callback())

    def content(self) -> bytes:
        """The rendered body (once), whatever is done by now; `status` and `headers` are known after it."""
        if self._content is None:
            rendered = self._render()
            if isinstance(rendered, Rendered):
                self.status, self.headers, rendered = rendered.status, rendered.headers, rendered.content
            self._content = rendered
        return self._content

    def __iter__(self) -> Iterator[bytes]:
        """For servers that do not park: wait here, then yield the body."""
        self.later.wait()
        yield self.content()
