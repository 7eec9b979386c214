"""GET /openapi.json: the API described from the marshmallow schemas (built once)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint

bp = Blueprint("openapi", __name__)


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI 3 document; apispec is imported only when someone asks for it."""
    from omni_mev.openapi_spec import build

    return build()


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3 document of this service."""
    return document()
