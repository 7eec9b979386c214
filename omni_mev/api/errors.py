"""Flask's error handlers: every error Flask sees, expected or not, becomes the API's JSON error."""
from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from omni_mev.errors import INTERNAL_ERROR, MethodNotAllowed, NotFound, OmniMevError, PayloadTooLarge, error_code
from omni_mev.jsonio import dumps

log = logging.getLogger(__name__)
NOT_FOUND = "No such endpoint; see /openapi.json for the API."
TOO_LARGE = "The request body is larger than the service accepts (AI_MAX_BODY_BYTES)."


def json_response(body: dict, status: int, headers: dict[str, str] | None = None) -> Response:
    """A JSON response with this status."""
    return Response(dumps(body), status=status, mimetype="application/json", headers=headers)


def error_response(error: OmniMevError) -> Response:
    """The JSON response of a domain error, with the headers it carries."""
    return json_response(error.to_dict(), error.status, error.headers)


def as_domain_error(error: HTTPException) -> OmniMevError:
    """werkzeug's routing and body errors in the API's own terms."""
    if error.code == 404:
        return NotFound(NOT_FOUND)
    if error.code == 405:
        return MethodNotAllowed(sorted(getattr(error, "valid_methods", None) or []))
    if error.code == 413:
        return PayloadTooLarge(TOO_LARGE)
    domain = OmniMevError(error.description or error.name)
    domain.status, domain.code = error.code or 500, error_code(error.name)
    return domain


def _http_error(error: HTTPException) -> Response:
    return error_response(as_domain_error(error))


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return json_response(INTERNAL_ERROR, 500)


def init_app(app: Flask) -> None:
    """Answer every error with JSON."""
    app.register_error_handler(OmniMevError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
