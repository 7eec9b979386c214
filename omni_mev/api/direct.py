"""The scoring endpoints, served straight from WSGI in front of Flask's request machinery.

Flask stays the application: the factory builds it, blueprints declare every
route, its error handlers and the OpenAPI document serve everything else. But
Flask's request context, hooks and response objects cost about 100 µs per
request, a third of a /predict, so the blueprints register their scoring
routes here instead of as Flask views. Each such route has exactly one code
path: this router reads the body, checks the API key, calls the route's
handler (which validates with the schemas and calls the predictor), encodes
the answer, and counts the request (ai_requests_total, ai_request_duration_ms).
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from gunicorn.http.errors import NoMoreData, ParseException

from omni_mev import metrics
from omni_mev.auth import ApiKeys
from omni_mev.deferred import PARKS, DeferredBody, Rendered
from omni_mev.errors import INTERNAL_ERROR, BadRequest, MethodNotAllowed, OmniMevError, PayloadTooLarge
from omni_mev.jsonio import dumps

if TYPE_CHECKING:
    from flask import Blueprint, Flask

log = logging.getLogger(__name__)
EXTENSION = "omni_mev.direct_routes"
ALLOWED = ["OPTIONS", "POST"]
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
_JSON = ("Content-Type", "application/json")

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


@dataclass(frozen=True)
class DirectRequest:
    """What a handler gets: the app, the body, the path's parameters and the WSGI environ."""

    app: Flask
    body: bytes
    params: Mapping[str, str]
    environ: Mapping[str, Any]


@dataclass(frozen=True)
class Answer:
    """A handler's answer with a status other than 200, or extra headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Later:
    """A handler's answer that waits on work running elsewhere: `render()` once `futures` are done, or at
    `deadline` (time.monotonic) at the latest; the worker serves other requests meanwhile (omni_mev.deferred)."""

    futures: Sequence[Future]
    deadline: float
    render: Callable[[], dict[str, Any] | Answer]


Handler = Callable[[DirectRequest], Any]
ErrorBody = Callable[[OmniMevError], dict[str, Any]]


def default_error_body(error: OmniMevError) -> dict[str, Any]:
    """The API's error shape: {"error", "message"[, "fields"]}."""
    return error.to_dict()


@dataclass(frozen=True)
class DirectRoute:
    """A POST route: its rule (also the metrics' endpoint label), handler and error shape."""

    rule: str
    handler: Handler
    error_body: ErrorBody = default_error_body


def read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (chunked or not) and 400 when malformed.

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
                raise BadRequest(f"Content-Length {declared!r} is not a number.") from None
            if size > limit:
                raise PayloadTooLarge(f"The body has {size} bytes; at most {limit} are accepted (AI_MAX_BODY_BYTES).")
            data = stream.read(size)
            if len(data) < size:
                raise BadRequest(f"The body ended after {len(data)} of its {size} bytes.")
            return data
        data = stream.read(limit + 1)
    except (ParseException, NoMoreData) as error:
        raise BadRequest(f"The body is not well-formed HTTP ({type(error).__name__}: {error}).") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"The body is over {limit} bytes, the most accepted (AI_MAX_BODY_BYTES).")
    return data


def _pattern(rule: str) -> re.Pattern[str]:
    """'/v2/models/<name>/infer' as a regular expression with named groups."""
    return re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", rule) + "$")


class DirectRoutes:
    """A WSGI application: the direct routes first, Flask for every other path."""

    def __init__(self, app: Flask, api_keys: ApiKeys) -> None:
        self.app = app
        self.flask_app: WsgiApp = app.wsgi_app
        self.api_keys = api_keys
        self.max_body_bytes: int = app.config["SETTINGS"].max_body_bytes
        self._exact: dict[str, DirectRoute] = {}
        self._patterns: list[tuple[re.Pattern[str], DirectRoute]] = []

    def add(self, route: DirectRoute) -> None:
        """Serve POST `route.rule` with `route.handler`."""
        if "<" in route.rule:
            self._patterns.append((_pattern(route.rule), route))
        else:
            self._exact[route.rule] = route

    def match(self, path: str) -> tuple[DirectRoute, dict[str, str]] | None:
        """The route serving this path, and the path's parameters."""
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        for pattern, route in self._patterns:
            found = pattern.match(path)
            if found:
                return route, found.groupdict()
        return None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        matched = self.match(environ.get("PATH_INFO", ""))
        if matched is None:
            return self.flask_app(environ, start_response)
        route, params = matched
        started = time.perf_counter()
        headers = [_JSON]
        try:
            self.api_keys.check(environ)
            method = environ["REQUEST_METHOD"]
            if method == "OPTIONS":
                start_response(_STATUS_LINES[204], [("Allow", ", ".join(ALLOWED))])
                return []
            if method != "POST":
                raise MethodNotAllowed(ALLOWED)
            request = DirectRequest(self.app, read_body(environ, self.max_body_bytes), params, environ)
            answer = route.handler(request)
            if isinstance(answer, Later):
                if environ.get(PARKS):
                    return self._later(route, answer, started, headers, start_response)
                # A server that cannot park: wait here, then answer as any other.
                wait(answer.futures, timeout=max(0.0, answer.deadline - time.monotonic()))
                answer = answer.render()
            if isinstance(answer, Answer):
                status, body = answer.status, dumps(answer.body)
                headers.extend((answer.headers or {}).items())
            else:
                status, body = 200, dumps(answer)
        except OmniMevError as error:
            status, body = error.status, dumps(route.error_body(error))
            headers.extend(error.headers.items())
        except Exception:  # noqa: BLE001 - a bug answers 500 JSON, never a traceback
            log.exception("unhandled error on %s", route.rule)
            status, body = 500, dumps(INTERNAL_ERROR)
        metrics.count_request(route.rule, metrics.outcome_of(status), (time.perf_counter() - started) * 1000.0)
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES[status], headers)
        return [body]


    @staticmethod
    def _later(route: DirectRoute, answer: Later, started: float, headers: list[tuple[str, str]],
               start_response: Callable) -> DeferredBody:
        """200 for now; the body (and so its Content-Length, set by the server), and the status when the answer
        decides it, when the answer is rendered."""

        def render() -> bytes | Rendered:
            rendered = answer.render()
            status = rendered.status if isinstance(rendered, Answer) else 200
            metrics.count_request(route.rule, metrics.outcome_of(status), (time.perf_counter() - started) * 1000.0)
            if isinstance(rendered, Answer):
                return Rendered(_STATUS_LINES[status], dumps(rendered.body), list((rendered.headers or {}).items()))
            return dumps(rendered)

        start_response(_STATUS_LINES[200], headers)
        return DeferredBody(answer.futures, answer.deadline, render)


def install(app: Flask, api_keys: ApiKeys) -> DirectRoutes:
    """Put the direct routes in front of the app's WSGI callable."""
    routes = app.extensions[EXTENSION] = DirectRoutes(app, api_keys)
    app.wsgi_app = routes
    return routes


def direct_route(blueprint: Blueprint, rule: str, error_body: ErrorBody = default_error_body
                 ) -> Callable[[Handler], Handler]:
    """Decorator: the blueprint serves POST `rule` with this handler, on the app's direct routes."""

    def register(handler: Handler) -> Handler:
        route = DirectRoute(rule, handler, error_body)
        blueprint.record_once(lambda state: state.app.extensions[EXTENSION].add(route))
        return handler

    return register
