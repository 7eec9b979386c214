"""The front: the service's WSGI entry, in front of Flask's request machinery.

Flask stays the application: the factory builds it, the route table
(omni_mev.api.routes) puts every route into its URL map, and its views and
error handlers serve the VIEW routes. The FAST routes (scoring, outcomes) are
served here instead: Flask's request context, hooks and response objects cost
about 100 µs per request, a third of a /predict. For every request the front

- matches the path and method in Flask's URL map (through the route table);
- checks the API key, unless the route is open to probes;
- serves a FAST route's handler (which validates with the schemas and calls
  the predictor), or hands the request to Flask (views, OPTIONS, unknown paths
  and methods, which Flask answers);
- renders errors with the one renderer, in the route's error shape;
- builds the response once, with its final status: at once, or for a Later
  when it is rendered (omni_mev.deferred);
- counts the request (ai_requests_total, ai_request_duration_ms) when the
  route is counted.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gunicorn.http.errors import NoMoreData, ParseException

from omni_mev.api.errors import JSON, render, status_line
from omni_mev.auth import keys_of
from omni_mev.core import accounting
from omni_mev.core.answers import Answer, Later, Reply, error_body
from omni_mev.core.keys import ApiKeys
from omni_mev.deferred import DeferredBody, Response
from omni_mev.environ_keys import ARRIVED_AT, BODY, CLOSE_CONNECTION, PARKS
from omni_mev.errors import BadRequest, PayloadTooLarge
from omni_mev.jsonio import dumps

if TYPE_CHECKING:
    from flask import Flask

    from omni_mev.api.table import Route, RouteTable

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
# X-Request-Start, set by nginx (nginx/omni-mev.conf) to when the request reached it.
REQUEST_START_HEADER = "HTTP_X_REQUEST_START"


@dataclass(frozen=True)
class DirectRequest:
    """What a handler gets: the app, the body, the path's parameters and the WSGI environ."""

    app: Flask
    body: bytes
    params: Mapping[str, str]
    environ: Mapping[str, Any]

    @property
    def arrived_at(self) -> float:
        """When the request reached this process: its first byte, where the worker says so; else now."""
        return self.environ.get(ARRIVED_AT) or time.time()

    @property
    def received_at(self) -> float | None:
        """When the request reached the proxy in front (its `X-Request-Start: t=<seconds>`, nginx's $msec), never
        later than now; None without the header.

        A LIVE order's deadline counts from then (omni_mev.trading): a request
        nginx replays on another instance, or one that waited in a queue, is
        not sent late. A client that sets the header itself can only shorten
        its own orders' deadlines: the earlier of it and now is taken.
        """
        raw = self.environ.get(REQUEST_START_HEADER)
        if not raw:
            return None
        try:
            seconds = float(raw.removeprefix("t="))
        except ValueError:
            return None
        return min(seconds, time.time()) if math.isfinite(seconds) else None


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (chunked or not) and 400 when malformed; either way
    the environ asks the worker to close the connection after the answer (CLOSE_CONNECTION).

    A declared length is checked before anything is read; a chunked body is
    read to one byte past the limit, so an oversized one is refused rather
    than cut.
    """
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    try:
        if declared:
            try:
                size = int(declared)
            except ValueError:
                raise _badly_framed(environ, f"Content-Length {declared!r} is not a number.") from None
            if size > limit:
                environ[CLOSE_CONNECTION] = True  # the body is left unread
                raise PayloadTooLarge(f"The body has {size} bytes; at most {limit} are accepted (AI_MAX_BODY_BYTES).")
            data = stream.read(size)
            if len(data) < size:
                raise _badly_framed(environ, f"The body ended after {len(data)} of its {size} bytes.")
            return data
        data = stream.read(limit + 1)
    except (ParseException, NoMoreData) as error:
        raise _badly_framed(environ, f"The body is not well-formed HTTP ({type(error).__name__}: {error}).") from None
    if len(data) > limit:
        environ[CLOSE_CONNECTION] = True
        raise PayloadTooLarge(f"The body is over {limit} bytes, the most accepted (AI_MAX_BODY_BYTES).")
    return data


def _badly_framed(environ: dict[str, Any], message: str) -> BadRequest:
    """A body whose end cannot be trusted: refused, and the connection closed after the answer."""
    environ[CLOSE_CONNECTION] = True
    return BadRequest(f"{message} The connection is closed.")


class Front:
    """The service's WSGI callable: FAST routes served here, everything else by Flask (see the module's doc)."""

    def __init__(self, app: Flask, table: RouteTable, api_keys: ApiKeys) -> None:
        self.app = app
        self.flask_app: WsgiApp = app.wsgi_app
        self.table = table
        self.api_keys = api_keys
        self.max_body_bytes: int = app.config["SETTINGS"].max_body_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        route, params = self.table.match(environ.get("PATH_INFO", ""), method)
        started = time.perf_counter()
        answer: Reply
        try:
            if route is None or route.auth:
                self.api_keys.check_environ(environ)
            if route is None or not route.is_fast_for(method):
                return self._flask(route, environ, start_response, started)
            # omni-mev's worker has read the body already (BODY); any other server's is read here.
            body = environ.get(BODY)
            if body is None:
                body = read_body(environ, self.max_body_bytes)
            handled = route.handler(DirectRequest(self.app, body, params, environ))
            if isinstance(handled, Later):
                if environ.get(PARKS):
                    # The response (its status included) is built once the answer is rendered.
                    return DeferredBody(handled, lambda: self._settled(route, handled, started), start_response)
                handled = handled.result()  # a server that cannot park: wait here
            answer = handled
        except Exception as error:  # noqa: BLE001 - domain errors as themselves, a bug as a logged 500
            answer = render(error, route.errors if route is not None else error_body)
        status, headers, content = self._response(route, answer, started)
        start_response(status, headers)
        return [content]

    def _settled(self, route: Route, later: Later, started: float) -> Response:
        """The response to an answer that waited, rendered now; a render that fails is a logged 500."""
        try:
            answer = later.render()
        except Exception as error:  # noqa: BLE001 - as in __call__
            answer = render(error, route.errors)
        return self._response(route, answer, started)

    def _response(self, route: Route | None, answer: Reply, started: float) -> Response:
        """The one way an answer becomes a response: status line, headers (type and length) and body; the
        request counted with its final status."""
        if isinstance(answer, Answer):
            status, content = answer.status, answer.encoded()
            headers = [("Content-Type", answer.content_type), *(answer.headers or {}).items()]
        else:
            status, content, headers = 200, dumps(answer), [JSON]
        headers.append(("Content-Length", str(len(content))))
        self._count(route, status, started)
        return status_line(status), headers, content

    def _flask(self, route: Route | None, environ: dict, start_response: Callable,
               started: float) -> Iterable[bytes]:
        """Flask answers: a view, an OPTIONS, or an unknown path or method."""
        if route is None or not route.counted:
            return self.flask_app(environ, start_response)

        def counted_start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            self._count(route, int(status[:3]), started)
            return start_response(status, headers, exc_info)

        return self.flask_app(environ, counted_start_response)

    @staticmethod
    def _count(route: Route | None, status: int, started: float) -> None:
        if route is not None and route.counted:
            accounting.count(route.path, status, started)


def install(app: Flask, table: RouteTable) -> Front:
    """Put the front in front of the app's WSGI callable."""
    front = Front(app, table, keys_of(app))
    app.wsgi_app = front  # type: ignore[method-assign]
    return front
