"""Domain errors: each carries its HTTP status and a machine-readable code.

Nothing here knows HTTP frameworks: the runtime, the predictor and the
trader raise these, and only the HTTP layer (omni_mev.api) turns them into
responses.
"""
from __future__ import annotations

import re
from typing import Any

INTERNAL_ERROR_MESSAGE = "The service failed to answer; it is logged."


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming the variable. (Here, a leaf, so the
    modules that parse settings, config and devices, need not import each other for it.)"""


class OmniMevError(Exception):
    """Base of the errors the API reports; status and code travel with the error."""

    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: {"error", "message"[, "fields"]}."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return body


class BadRequest(OmniMevError):
    """The body is not JSON, not a JSON object, or not a well-formed HTTP body."""

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


class RequestTimeout(OmniMevError):
    """The request, head and body, did not arrive in full within the read deadline."""

    status = 408
    code = "request_timeout"


class Unauthorized(OmniMevError):
    """Missing or wrong API key; the message never says which."""

    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="omni-mev"'}


class NotFound(OmniMevError):
    """No such endpoint or resource."""

    status = 404
    code = "not_found"


class MethodNotAllowed(OmniMevError):
    """The endpoint exists, but not for this method."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"Method not allowed here; allowed: {', '.join(allowed)}.")
        self.headers = {"Allow": ", ".join(allowed)}


class ModelUnavailable(OmniMevError):
    """No model could be loaded in this worker."""

    status = 503
    code = "model_unavailable"


class QualityNotReady(OmniMevError):
    """No live quality report has been computed yet (or none is computed where the service runs)."""

    status = 503
    code = "quality_not_ready"
    headers = {"Retry-After": "10"}


class InternalError(OmniMevError):
    """The service failed; the log has the details, the client only this."""

    def __init__(self) -> None:
        super().__init__(INTERNAL_ERROR_MESSAGE)


# The body of every 500, wherever it is rendered (Flask's handlers, the direct routes, the worker).
INTERNAL_ERROR = InternalError().to_dict()


def error_code(phrase: str) -> str:
    """An HTTP reason phrase as an error code: "Request Header Fields Too Large" -> request_header_fields_too_large."""
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
