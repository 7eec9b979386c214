"""The Flask application class: JSON through orjson, and empty answers without a content type."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import JSONProvider

from omni_mev.jsonio import dumps


class OrjsonProvider(JSONProvider):
    """jsonify() and dict returns through orjson."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        # Flask's stubs type response_class as werkzeug's sans-IO Response, whose first argument is not the body.
        return self._app.response_class(dumps(obj), mimetype=self.mimetype)  # type: ignore[return-value,arg-type]


class Application(Flask):
    """Flask, answering OPTIONS with 204 and the Allow header instead of an empty text/html page."""

    json_provider_class = OrjsonProvider

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response
