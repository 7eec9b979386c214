"""Domain errors carry their HTTP status; the handlers here turn every error into JSON."""
from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class OmniMevError(Exception):
    """Base of the errors the API reports; status and code travel with the error."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return body


class BadRequest(OmniMevError):
    """The body is not JSON, or not a JSON object."""

    status = 400
    code = "bad_request"


class ValidationFailed(OmniMevError):
    """The body is JSON but breaks the schema; `fields` names each bad field."""

    status = 422
    code = "validation_error"


class PayloadTooLarge(OmniMevError):
    """More items or bytes than the service accepts."""

    status = 413
    code = "payload_too_large"


class Unauthorized(OmniMevError):
    """Missing or wrong API key; the message never says which."""

    status = 401
    code = "unauthorized"


class ModelUnavailable(OmniMevError):
    """No model could be loaded in this worker."""

    status = 503
    code = "model_unavailable"


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def error_response(error: OmniMevError) -> tuple[Response, int]:
    """The JSON response of a domain error."""
    return jsonify(error.to_dict()), error.status


def _http_error(error: HTTPException) -> tuple[Response, int]:
    status = error.code or 500
    messages = {
        404: "No such endpoint; see /openapi.json for the API.",
        405: f"Method not allowed here; allowed: {', '.join(sorted(error.valid_methods or []))}."
        if getattr(error, "valid_methods", None) else "Method not allowed here.",
        413: "The request body is larger than the service accepts (AI_MAX_BODY_BYTES).",
    }
    message = messages.get(status) or error.description or error.name
    code = PayloadTooLarge.code if status == 413 else _snake(error.name)
    response = jsonify({"error": code, "message": message})
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return response, status


def _unexpected(error: Exception) -> tuple[Response, int]:
    log.exception("unhandled error")
    return jsonify({"error": "internal_error", "message": "The service failed to answer; it is logged."}), 500


def init_app(app: Flask) -> None:
    """Answer every error, expected or not, with JSON."""
    app.register_error_handler(OmniMevError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
