"""Builds the OpenAPI 3 document from the marshmallow schemas with apispec."""
from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields

from omni_mev import __version__, schemas
from omni_mev.features import EXAMPLE_FEATURES, FEATURE_BOUNDS, FEATURE_NAMES, N_FEATURES


def _feature_object() -> dict[str, Any]:
    properties = {}
    for name, bounds in FEATURE_BOUNDS.items():
        prop: dict[str, Any] = {"type": "integer" if bounds.integer else "number", "description": bounds.description}
        if bounds.minimum is not None:
            prop["minimum"] = bounds.minimum
        if bounds.maximum is not None:
            prop["maximum"] = bounds.maximum
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": list(FEATURE_NAMES),
            "additionalProperties": False}


def _feature_vector(self, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: how FeatureVector looks in JSON Schema."""
    if not isinstance(field, schemas.FeatureVector):
        return {}
    return {
        "oneOf": [
            {"type": "array", "items": {"type": "number"}, "minItems": N_FEATURES, "maxItems": N_FEATURES,
             "description": "in order: " + ", ".join(FEATURE_NAMES)},
            _feature_object(),
        ],
        "example": list(EXAMPLE_FEATURES),
    }


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json("Error")}


def build() -> dict[str, Any]:
    """The whole document as a dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="omni-mev",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Calibrated success probability of DEX arbitrage opportunities."},
    )
    plugin.converter.add_attribute_function(_feature_vector)
    spec.components.schema("PredictRequest", schema=schemas.PredictRequestSchema)
    spec.components.schema("PredictResponse", schema=schemas.PredictResponseSchema)
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    spec.path(
        path="/predict",
        operations={"post": {
            "summary": "Score one opportunity",
            "requestBody": {"required": True, **_json("PredictRequest")},
            "responses": {
                "200": {"description": "Decision and confidence", **_json("PredictResponse")},
                "400": _error("Body is not a JSON object"),
                "413": _error("Body too large"),
                "422": _error("Schema violation; `fields` names each bad field"),
                "503": _error("No model loaded in this worker"),
            },
        }},
    )
    for path, summary in (
        ("/health", "200 when a model is loaded, 503 with the reason otherwise"),
        ("/status", "Engine state and request count across workers"),
        ("/metrics_summary", "JSON digest of the Prometheus metrics"),
    ):
        spec.path(path=path, operations={"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    return spec.to_dict()
