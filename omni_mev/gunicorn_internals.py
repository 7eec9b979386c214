"""gunicorn's private internals, used by omni-mev's worker (omni_mev/workers.py) and nowhere else.

The worker keeps gunicorn's parser, WSGI environ, response and hooks, and
changes how connections are served. That needs what gunicorn does not
document as an API: its module globals (the response class `wsgi.create`
builds, the error writer `Worker.handle_error` calls, the date formatter),
its request's body framing and `Expect: 100-continue` flag, the forwarding
trust check, and its response's one-send writes. Every use is here, pinned
to the releases it was tested with (setup.cfg); tests/test_gunicorn_internals.py
fails, naming what changed, on a release outside them or one whose internals
no longer behave as these functions expect.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

TESTED_RELEASES = ">=27,<28"

_format_http_date = util.http_date
_date_cache: list[Any] = [None, ""]


def cached_http_date(timestamp: float | None = None) -> str:
    """util.http_date, formatted once a second for the Date header (it cost ~3% of a request)."""
    if timestamp is not None:
        return _format_http_date(timestamp)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, _format_http_date(now)]
    return _date_cache[1]


class OneSendResponse(wsgi.Response):
    """A response whose headers leave with the first body chunk (unless chunked)."""

    _pending: bytes | None = None
    headers_sent: bool

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        if not self.upgrade and not self.should_close():
            # How long the worker keeps the connection idle (RFC 9112's Keep-Alive hint): clients that honour it
            # stop reusing the connection before the worker closes it, instead of racing the close.
            lines.append(f"Keep-Alive: timeout={self.cfg.keepalive}\r\n")
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._pending = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _flush_headers(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            util.write(self.sock, pending)

    def _emit_body(self, data: bytes) -> None:
        if self._pending is not None and not self.chunked:
            data, self._pending = self._pending + data, None
        else:
            self._flush_headers()
        util.write(self.sock, data, self.chunked)

    def sendfile(self, respiter: Any) -> bool:
        return False  # the body goes through write(), which carries the headers

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        self._flush_headers()
        super().close()


# forwarded_allow_ips verdicts by peer address: gunicorn parses the address
# and walks the allow list on every request (~3% of one); a worker's settings
# never change, and its peers are few (nginx, or a handful of clients).
_PEER_TRUST: dict[str, bool] = {}
_PEER_TRUST_LIMIT = 4096


class PeerTrustCachingRequest(Request):
    """gunicorn's request, remembering per peer address whether it may set forwarding headers."""

    def _peer_is_trusted_proxy(self) -> bool:
        peer = self.peer_addr
        if not isinstance(peer, tuple):
            return True  # a unix socket: gunicorn trusts it too
        trusted = _PEER_TRUST.get(peer[0])
        if trusted is None:
            if len(_PEER_TRUST) >= _PEER_TRUST_LIMIT:
                _PEER_TRUST.clear()
            trusted = _PEER_TRUST[peer[0]] = super()._peer_is_trusted_proxy()
        return trusted


def install(write_error: Callable[[Any, int, str, str], None]) -> None:
    """In this worker process only: gunicorn builds OneSendResponse responses, answers its own errors with
    `write_error`, and formats the Date header once a second."""
    wsgi.Response = OneSendResponse
    util.write_error = write_error
    util.http_date = cached_http_date


def parse_head(cfg: Any, head: bytes, peer: Any, number: int) -> Request:
    """gunicorn's parse of a complete request head (its errors propagate)."""
    return PeerTrustCachingRequest(cfg, IterUnreader((head,)), peer, number)


def declared_body_length(request: Request) -> int | None:
    """The body's length from the head: None for a chunked body, 0 for none."""
    reader = request.body.reader
    if isinstance(reader, ChunkedReader):
        return None
    return reader.length if isinstance(reader, LengthReader) else 0


def take_expect_continue(request: Request) -> bool:
    """Whether the client waits for `100 Continue`; gunicorn will not send it again when it builds the environ."""
    expected = request._expected_100_continue
    request._expected_100_continue = False
    return expected
