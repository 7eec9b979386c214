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
        prop["minimum"] = bounds.minimum
        prop["maximum"] = bounds.upper
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": list(FEATURE_NAMES),
            "additionalProperties": False}


def _feature_vector(self, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: how FeatureVector and BatchItems look in JSON Schema."""
    if isinstance(field, schemas.BatchItems):
        return {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/PredictRequest"},
                "description": "at most AI_MAX_BATCH_SIZE (default 4096) items"}
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
    spec.components.schema("BatchRequest", schema=schemas.BatchRequestSchema)
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
    spec.path(
        path="/predict/batch",
        operations={"post": {
            "summary": "Score many opportunities; results in order, one per item",
            "requestBody": {"required": True, **_json("BatchRequest")},
            "responses": {
                "200": {"description": "results[i] answers items[i] (decision, confidence, opportunity_id, "
                                       "execution), plus threshold, mode, model_type, model_version",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "413": _error("More items than AI_MAX_BATCH_SIZE"),
                "422": _error("An invalid item; fields are named items.<index>.<field>; nothing is scored"),
            },
        }},
    )
    v2_object = {"200": {"description": "Open Inference Protocol JSON", "content": {"application/json": {
        "schema": {"type": "object"}}}}, "400": {"description": '{"error": "..."}'}}
    for path, method, summary in (
        ("/v2", "get", "Server metadata (Open Inference Protocol)"),
        ("/v2/health/live", "get", "Liveness: 200, empty body"),
        ("/v2/health/ready", "get", "Readiness: 200 when a model is loaded, 400 otherwise"),
        ("/v2/models/lstm_omni", "get", "Model metadata"),
        ("/v2/models/lstm_omni/ready", "get", "Model readiness"),
        ("/v2/models/lstm_omni/infer", "post", "Inference: input 'features' FP32 [batch, 8] or [batch, seq, 8]; "
                                               "outputs 'confidence' FP32 and 'decision' BOOL, [batch, 1]"),
    ):
        spec.path(path=path, operations={method: {"summary": summary, "responses": v2_object}})
    for path, summary in (
        ("/health", "200 when a model is loaded, 503 with the reason otherwise"),
        ("/status", "Engine state and request count across workers"),
        ("/metrics_summary", "JSON digest of the Prometheus metrics"),
    ):
        spec.path(path=path, operations={"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    return spec.to_dict()
