"""GET /openapi.json: the API described from the marshmallow schemas (built once per worker)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import current_app

from omni_mev import auth
from omni_mev.api import predictor_of
from omni_mev.api.table import Route, table_of



@lru_cache(maxsize=4)
def document(routes: tuple[Route, ...], model_version: str | None, keys_required: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document; apispec is imported only when someone asks for it."""
    from omni_mev.openapi_spec import build

    return build(routes, model_version, keys_required)


def openapi_json() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this service (security declared only when API keys are configured)."""
    return document(table_of(current_app).routes, predictor_of(current_app).status().version,
                    current_app.extensions[auth.EXTENSION].enabled)
