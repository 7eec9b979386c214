"""The one error renderer: every error the service answers, wherever it is caught, as the API's JSON.

The front (fast routes), Flask's error handlers (views, unknown paths, wrong
methods) and the worker (a request the application never saw: malformed,
too slow, too large) all render errors here, each in the error shape of the
route the request was for (omni_mev.api.routes).
"""
from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException

from omni_mev.core.answers import JSON_TYPE, Answer, ErrorShape, error_body, error_status_and_body
from omni_mev.errors import MethodNotAllowed, NotFound, OmniMevError, PayloadTooLarge, error_code
from omni_mev.jsonio import dumps

if TYPE_CHECKING:
    from flask import Flask

NOT_FOUND = "No such endpoint; see /openapi.json for the API."
TOO_LARGE = "The request body is larger than the service accepts (AI_MAX_BODY_BYTES)."
JSON = ("Content-Type", JSON_TYPE)
STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


def status_line(status: int) -> str:
    """The status line's "code phrase"."""
    return STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase}"


def render(error: BaseException, shape: ErrorShape = error_body) -> Answer:
    """The answer to this error, its body encoded: a domain error as itself (with its headers), werkzeug's in the
    API's terms, anything else a logged 500 whose body says nothing of the cause (omni_mev.core.answers)."""
    if isinstance(error, HTTPException):
        error = as_domain_error(error)
    status, body = error_status_and_body(error, shape)
    return Answer(status, dumps(body), error.headers if isinstance(error, OmniMevError) else None)


def http_error(status: int, message: str, phrase: str | None = None) -> OmniMevError:
    """An HTTP status the service answers as a domain error: its code from the phrase."""
    phrase = phrase or HTTPStatus(status).phrase
    domain = OmniMevError(message or phrase)
    domain.status, domain.code = status, error_code(phrase)
    return domain


def as_domain_error(error: HTTPException) -> OmniMevError:
    """werkzeug's routing and body errors in the API's own terms."""
    if error.code == 404:
        return NotFound(NOT_FOUND)
    if error.code == 405:
        return MethodNotAllowed(sorted(getattr(error, "valid_methods", None) or []))
    if error.code == 413:
        return PayloadTooLarge(TOO_LARGE)
    return http_error(error.code or 500, error.description or error.name, error.name)


def init_app(app: Flask, shape_of: Callable[[str, str], ErrorShape]) -> None:
    """Answer every error Flask sees with JSON, in the shape of the route the request was for."""
    from flask import Response, request

    def respond(error: BaseException) -> Response:
        answer = render(error, shape_of(request.path, request.method))
        return Response(answer.body, status=answer.status, headers=dict(answer.headers or {}),
                        mimetype=answer.content_type)

    app.register_error_handler(OmniMevError, respond)
    app.register_error_handler(HTTPException, respond)
    app.register_error_handler(Exception, respond)

