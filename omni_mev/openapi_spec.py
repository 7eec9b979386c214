"""The OpenAPI 3.1 document: request schemas from the marshmallow schemas (apispec), answers as the service gives them.

It is checked against the running service in the test suite (schemathesis,
every check): every answer the service gives is documented, and every request
the document allows is accepted. OpenAPI 3.1 because its JSON Schema can give
each position of the list form of `features` its own bounds (`prefixItems`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields

from omni_mev.core import schemas
from omni_mev.api.table import Route
from omni_mev.config import DEFAULT_MAX_BATCH_SIZE
from omni_mev.features import EXAMPLE_FEATURES, FEATURE_BOUNDS, FEATURE_NAMES, MAX_SEQUENCE, N_FEATURES
from omni_mev.ledger.quality import WINDOWS
from omni_mev.plausibility import CHECKS
from omni_mev.runtime.base import MODEL_NAME
from omni_mev.core.schemas import ID_MAX_LENGTH
from omni_mev.ledger.store import OBSERVED_AT_SKEW_S
from omni_mev.version import __version__

REF = "#/components/schemas/"
# Limits of the default settings; the document describes a service running with them.


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _feature(name: str) -> dict[str, Any]:
    bounds = FEATURE_BOUNDS[name]
    return {"type": "integer" if bounds.integer else "number", "minimum": bounds.minimum, "maximum": bounds.upper,
            "description": f"{name}: {bounds.description}"}


def feature_vector() -> dict[str, Any]:
    """A list in feature order with per-position bounds, or an object keyed by feature name."""
    return {
        "oneOf": [
            {"type": "array", "prefixItems": [_feature(n) for n in FEATURE_NAMES], "minItems": N_FEATURES,
             "maxItems": N_FEATURES, "description": "in order: " + ", ".join(FEATURE_NAMES)},
            {"type": "object", "properties": {n: _feature(n) for n in FEATURE_NAMES}, "required": list(FEATURE_NAMES),
             "additionalProperties": False},
        ],
        "examples": [list(EXAMPLE_FEATURES)],
    }


def _attribute_function(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec hook: how the API's own field types look in JSON Schema."""
    if isinstance(field, schemas.BatchItems):
        return {"type": "array", "minItems": 1, "maxItems": DEFAULT_MAX_BATCH_SIZE, "items": _ref("PredictRequest"),
                "description": f"at most AI_MAX_BATCH_SIZE (default {DEFAULT_MAX_BATCH_SIZE}) items"}
    if isinstance(field, schemas.FeatureVector):
        return {"$ref": REF + "FeatureVector"}
    return {}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return {"description": description, **_json(_ref(schema))}


def _obj(properties: dict[str, Any], required: list[str] | None = None, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required or list(properties)}
    if closed:
        schema["additionalProperties"] = False
    return schema


NUMBER = {"type": "number"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
MODE = {"type": "string", "enum": list(schemas.MODES)}
MODEL_TYPE = {"type": "string", "enum": list(schemas.MODEL_TYPES)}
IMPLAUSIBLE = {"type": "array", "items": {"type": "string", "enum": list(CHECKS)}, "minItems": 1,
               "description": "the plausibility checks this opportunity fails (docs/model.md)"}
TENSOR_OUT = _obj({"name": {"type": "string", "enum": ["confidence", "decision", "plausible"]},
                   "datatype": {"type": "string", "enum": ["FP32", "BOOL"]},
                   "shape": {"type": "array", "items": {"type": "integer"}},
                   "data": {"type": "array", "items": {"type": ["number", "boolean"]}}})
TENSOR_META = _obj({"name": STRING, "datatype": STRING, "shape": {"type": "array", "items": {"type": "integer"}}})


def _v2_request() -> dict[str, Any]:
    """$inference_request: one input `features`, FP32, [batch, 8] or [batch, seq, 8], data flat or nested.

    JSON Schema cannot tie the number of values in `data` to `shape`: a request
    whose data does not fill its shape is answered 400.
    """
    batch = {"type": "integer", "minimum": 1, "maximum": DEFAULT_MAX_BATCH_SIZE}
    width = {"type": "integer", "const": N_FEATURES}
    shape = {"oneOf": [
        {"type": "array", "prefixItems": [batch, width], "minItems": 2, "maxItems": 2},
        {"type": "array", "prefixItems": [batch, {"type": "integer", "minimum": 1, "maximum": MAX_SEQUENCE}, width],
         "minItems": 3, "maxItems": 3},
    ], "description": f"[batch, {N_FEATURES}] or [batch, seq, {N_FEATURES}]; data must hold batch x seq x "
                      f"{N_FEATURES} numbers"}
    data = {"type": "array", "description": "row-major numbers, flat or nested as the shape says", "minItems": 1}
    tensor = _obj({"name": {"type": "string", "const": "features"}, "shape": shape,
                   "datatype": {"type": "string", "const": "FP32"}, "parameters": {"type": "object"}, "data": data},
                  required=["name", "shape", "datatype", "data"], closed=False)
    ids = _obj({"name": {"type": "string", "const": "opportunity_id"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 2},
                "datatype": {"type": "string", "const": "BYTES"}, "parameters": {"type": "object"},
                "data": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": ID_MAX_LENGTH}}},
               required=["name", "shape", "datatype", "data"], closed=False)
    output = _obj({"name": {"type": "string", "enum": ["confidence", "decision", "plausible"]},
                   "parameters": {"type": "object"}}, required=["name"], closed=False)
    return _obj({"id": STRING, "parameters": {"type": "object"},
                 "inputs": {"type": "array", "prefixItems": [tensor, ids], "minItems": 1, "maxItems": 2,
                            "description": "'features', then optionally 'opportunity_id' (BYTES [batch], one id per "
                                           "row, kept in the ledger)"},
                 "outputs": {"type": "array", "items": output}}, required=["inputs"], closed=False)


def _components(spec: APISpec, plugin: MarshmallowPlugin) -> None:
    spec.components.schema("FeatureVector", feature_vector())
    spec.components.schema("PredictRequest", schema=schemas.PredictRequestSchema)
    spec.components.schema("BatchRequest", schema=schemas.BatchRequestSchema)
    spec.components.schema("Execution", schema=schemas.ExecutionSchema)
    spec.components.schema("ScoredItem", schema=schemas.ScoredItemSchema)
    spec.components.schema("PredictResponse", schema=schemas.PredictResponseSchema)
    spec.components.schema("BatchResponse", schema=schemas.BatchResponseSchema)
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    spec.components.schema("V2Error", _obj({"error": STRING}))
    spec.components.schema("Outcome", _outcome(plugin))
    spec.components.schema("InferenceRequest", _v2_request())
    spec.components.schema("InferenceResponse", _obj({
        "model_name": {"type": "string", "const": MODEL_NAME}, "model_version": STRING, "id": STRING,
        "parameters": _obj({"threshold": PROBABILITY, "mode": MODE, "model_type": MODEL_TYPE,
                            "inference_time_ms": NUMBER,
                            "implausible": {"type": "object", "additionalProperties": IMPLAUSIBLE}},
                           required=["threshold", "mode", "model_type", "inference_time_ms"]),
        "outputs": {"type": "array", "items": TENSOR_OUT},
    }))


def _health_and_status(spec: APISpec) -> None:
    spec.path(path="/health", operations={"get": {
        "summary": "200 when this worker has a model, 503 with the reason otherwise (no credentials needed)",
        "responses": {
            "200": {"description": "A model serves", **_json(_obj({
                "status": {"type": "string", "const": "ok"}, "model_type": MODEL_TYPE, "model_version": STRING}))},
            "503": _error("No model loaded in this worker; message says why"),
        }}})
    maybe_null = {"type": ["string", "null"]}
    spec.path(path="/status", operations={"get": {
        "summary": "Engine state, and API requests (scoring, outcomes, quality) counted across workers",
        "responses": {
            "200": {"description": "OK", **_json(_obj({
                "ai_engine": {"type": "string", "enum": ["online", "degraded"]}, "mode": MODE,
                "model_type": {"type": ["string", "null"], "enum": ["onnx", "pytorch", None]},
                "model_version": maybe_null, "model_device": maybe_null, "threshold": PROBABILITY,
                "threshold_source": {"type": "string", "enum": ["AI_THRESHOLD", "model card", "default"]},
                "redis_connected": BOOLEAN,
                "total_requests": {"type": "integer", "minimum": 0}, "uptime_s": NUMBER,
                "worker_pid": {"type": "integer"},
                "ledger": _obj({"enabled": BOOLEAN, "writable": BOOLEAN, "problem": maybe_null,
                                "pending": {"type": "integer", "minimum": 0},
                                "oldest_pending_age_s": {"type": ["number", "null"]}}),
                "outbox": {"oneOf": [{"type": "null"}, _obj({
                    "claims": {"type": "string", "enum": ["database", "redis", "host"]},
                    "database": {"type": "string", "enum": ["sqlite", "postgresql"]},
                    "claims_waiting": {"type": "integer", "minimum": 0},
                    "claim_in_hand_s": {"type": ["number", "null"]},
                    "outcomes_waiting": {"type": "integer", "minimum": 0},
                    "problem": maybe_null})]},
                "model_family": maybe_null, "recommended_threshold": {"type": ["number", "null"]},
                "shadow_version": maybe_null, "registry": maybe_null}))},
            "401": _error("Missing or invalid API key"),
        }}})
    spec.path(path="/metrics_summary", operations={"get": {
        "summary": "JSON digest of the Prometheus metrics, exact across workers, at most ~1 s old",
        "responses": {
            "200": {"description": "OK", **_json(_obj({
                "total_requests": {"type": "integer"}, "errors": {"type": "integer"},
                "requests": {"type": "object"}, "decisions": {"type": "object"},
                "inference_latency": {"type": "object"}, "last_confidence": {"type": ["number", "null"]},
                "model_fallbacks": {"type": "integer"}, "models_serving": {"type": "array"},
                "cache": {"type": "object"}, "feature_out_of_range": {"type": "object"},
                "implausible": {"type": "object"}, "model_type": {"type": ["string", "null"]},
                "model_version": maybe_null}, required=["total_requests", "errors"], closed=False))},
            "401": _error("Missing or invalid API key"),
        }}})
    spec.path(path="/openapi.json", operations={"get": {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1", **_json({"type": "object"})},
                      "401": _error("Missing or invalid API key")}}})


def _scoring(spec: APISpec) -> None:
    common = {
        "400": _error("The body is not a JSON object, or not well-formed HTTP (a malformed chunked body)"),
        "401": _error("Missing or invalid API key"),
        "413": _error("Body over AI_MAX_BODY_BYTES, chunked or not, or more items than AI_MAX_BATCH_SIZE"),
        "422": _error("Schema violation; `fields` names each bad field"),
        "503": _error("No model loaded in this worker"),
    }
    spec.path(path="/predict", operations={"post": {
        "summary": "Score one opportunity",
        "requestBody": {"required": True, **_json(_ref("PredictRequest"))},
        "responses": {"200": {"description": "Decision and confidence", **_json(_ref("PredictResponse"))},
                      **common}}})
    spec.path(path="/predict/batch", operations={"post": {
        "summary": "Score many opportunities; results in order, one per item",
        "requestBody": {"required": True, **_json(_ref("BatchRequest"))},
        "responses": {"200": {"description": "results[i] answers items[i]", **_json(_ref("BatchResponse"))},
                      **common}}})


def _outcome(plugin: MarshmallowPlugin) -> dict[str, Any]:
    """OutcomeSchema's fields, and its one rule across fields as two forms: an executed trade carries `success`;
    one that was not executed has no label (success, if given, is false)."""
    assert plugin.converter is not None  # set when the plugin is registered with the spec
    fields_ = plugin.converter.schema2jsonschema(schemas.OutcomeSchema)["properties"]
    required = ["opportunity_id"]
    flag = {key: value for key, value in fields_["executed"].items() if key != "default"}
    executed = {**fields_, "executed": {**flag, "const": True}}
    not_executed = {**fields_, "executed": {**flag, "const": False},
                    "success": {**fields_["success"], "const": False}}
    return {"oneOf": [
        {"type": "object", "properties": executed, "required": [*required, "success"], "additionalProperties": False,
         "description": "an executed opportunity (executed may be left out)"},
        {"type": "object", "properties": not_executed, "required": [*required, "executed"],
         "additionalProperties": False, "description": "an opportunity that was not executed: no label"},
    ]}


def _ledger(spec: APISpec) -> None:
    result = _obj({"opportunity_id": STRING, "result": {"type": "string", "enum": ["stored", "duplicate", "unknown",
                                                                                    "conflict", "invalid"]},
                   "status": {"type": "integer", "enum": [200, 201, 404, 409, 422]}, "message": STRING,
                   "error": STRING, "fields": {"type": "object"}},
                  required=["opportunity_id", "result", "status", "message"])
    ids = {"type": "array", "items": STRING}
    many = _obj({"stored": {"type": "integer"}, "duplicates": {"type": "integer"}, "unknown": ids, "conflicts": ids,
                 "invalid": ids, "retry_after_s": NUMBER, "results": {"type": "array", "items": result},
                 "error": STRING, "message": STRING},
                required=["stored", "duplicates", "unknown", "conflicts", "invalid", "results"])
    outcome = _ref("Outcome")
    spec.path(path="/outcomes", operations={"post": {
        "summary": "What happened to judged opportunities: one outcome (object) or up to AI_MAX_BATCH_SIZE (array); "
                   "the same outcome twice is one outcome",
        "requestBody": {"required": True, **_json({"oneOf": [
            outcome, {"type": "array", "items": outcome, "minItems": 1, "maxItems": DEFAULT_MAX_BATCH_SIZE}]})},
        "responses": {
            "200": {"description": "One: already stored the same. Many: processed; `unknown` lists ids the ledger "
                                   "does not have yet (retry after `retry_after_s`)", **_json({"oneOf": [result, many]})},
            "201": {"description": "One: stored", **_json(result)},
            "400": _error("The body is not JSON, or neither an object nor an array"),
            "401": _error("Missing or invalid API key"),
            "404": {"description": "One: no prediction with this opportunity_id yet; answered at once, with "
                                   "Retry-After (a prediction from the last moment may be on its way)",
                    **_json(result)},
            "409": {"description": "A different outcome for an id is already stored (the others were processed)",
                    **_json({"oneOf": [result, many]})},
            "413": _error("More outcomes than AI_MAX_BATCH_SIZE, or a body over AI_MAX_BODY_BYTES"),
            "422": {"description": "An invalid outcome; `fields` names it (index.field for an array). Or one not "
                                   f"stored: observed more than {OBSERVED_AT_SKEW_S:.0f} s before its prediction "
                                   "was scored, or refused by the ledger's database (set aside); for an array, the "
                                   "others were processed and `invalid` lists those ids",
                    **_json({"oneOf": [_ref("Error"), result, many]})},
            "503": _error("The ledger is off or its database unreachable (nothing was stored), or it did not "
                          "commit within 10 s (send again: the same outcome twice is one outcome)"),
        }}})
    figures = {"type": "object", "description": "predictions, labelled, label_coverage, auc, brier, log_loss, ece, "
                                                "reliability, precision, recall, pnl, approved, rejected, and "
                                                "`served` (from, until: when the version answered in the window)"}
    champion = {**figures, "description": "the version this instance serves, over the rows it scored: `version` "
                                          "and " + figures["description"]}
    per_version = {"type": "object", "additionalProperties": figures, "description": "figures per model version"}
    spec.path(path="/quality", operations={"get": {
        "summary": "Live quality of the confidence over the outcomes reported for predictions made in the window",
        "parameters": [
            {"name": "window", "in": "query", "schema": {"type": "string", "enum": list(WINDOWS),
                                                         "default": "1h"},
             "description": "other spellings of these durations (60m, 1d, 168h) name the same window"},
            {"name": "model", "in": "query", "schema": {"type": "string", "enum": ["champion", "shadow"]},
             "description": "default: both, side by side"},
        ],
        "responses": {
            "200": {"description": "The report", **_json(_obj({
                "window": STRING, "since": NUMBER, "until": NUMBER,
                "threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "computed_at": NUMBER, "age_s": NUMBER, "computed_in_s": NUMBER,
                "models": {"type": "object", "properties": {"champion": champion, "earlier": per_version,
                                                            "shadow": per_version},
                           "additionalProperties": False}}))},
            "401": _error("Missing or invalid API key"),
            "422": _error("An unknown window or model"),
            "503": _error("The ledger is off or its database unreachable, or no report computed yet "
                          "(quality_not_ready, with Retry-After)"),
        }}})


def _open_inference(spec: APISpec, model_version: str | None) -> None:
    v2_error = _error('{"error": "..."}', "V2Error")
    denied = _error("Missing or invalid API key", "V2Error")
    serving = {"type": "string", "enum": [model_version]} if model_version else STRING
    version = {"name": "version", "in": "path", "required": True, "schema": serving,
               "description": "the serving model_version; any other answers 404"}
    empty_ok = {"description": "Yes (empty body)"}
    spec.path(path="/v2", operations={"get": {"summary": "Server metadata", "responses": {
        "200": {"description": "OK", **_json(_obj({"name": STRING, "version": STRING,
                                                   "extensions": {"type": "array", "items": STRING}}))},
        "401": denied}}})
    spec.path(path="/v2/health/live", operations={"get": {
        "summary": "Liveness (no credentials needed)", "responses": {"200": empty_ok}}})
    spec.path(path="/v2/health/ready", operations={"get": {
        "summary": "Readiness: 200 when a model is loaded, 400 with the reason otherwise (no credentials needed)",
        "responses": {"200": empty_ok, "400": v2_error}}})
    metadata = _obj({"name": STRING, "versions": {"type": "array", "items": STRING}, "platform": STRING,
                     "inputs": {"type": "array", "items": TENSOR_META},
                     "outputs": {"type": "array", "items": TENSOR_META}, "parameters": {"type": "object"}})
    base = f"/v2/models/{MODEL_NAME}"
    for prefix, parameters, extra in ((base, [], {}),
                                      (base + "/versions/{version}", [version], {"404": v2_error})):
        spec.path(path=prefix, parameters=parameters, operations={"get": {
            "summary": "Model metadata", "responses": {
                "200": {"description": "OK", **_json(metadata)}, "401": denied, **extra}}})
        spec.path(path=prefix + "/ready", parameters=parameters, operations={"get": {
            "summary": "Model readiness", "responses": {
                "200": empty_ok, "400": v2_error, "401": denied, **extra}}})
        spec.path(path=prefix + "/infer", parameters=parameters, operations={"post": {
            "summary": "Inference: input 'features' FP32 [batch, 8] or [batch, seq, 8]; outputs 'confidence' FP32, "
                       "'decision' and 'plausible' BOOL, [batch, 1]; nothing is dispatched",
            "requestBody": {"required": True, **_json(_ref("InferenceRequest"))},
            "responses": {
                "200": {"description": "$inference_response; with outputs asked for as binary data (the binary "
                                       "tensor data extension, docs/api.md), the JSON is the body's first "
                                       "Inference-Header-Content-Length bytes and the tensors follow",
                        "content": {"application/json": {"schema": _ref("InferenceResponse")},
                                    "application/octet-stream": {"schema": {"type": "string",
                                                                            "format": "binary"}}}},
                "400": v2_error, "401": denied,
                "413": _error("Body or batch over the limits", "V2Error"),
                "503": _error("No model loaded in this worker", "V2Error"), **extra}}})


def build(routes: Iterable[Route], model_version: str | None = None, keys_required: bool = True) -> dict[str, Any]:
    """The whole document as a dict, for a worker serving this model version (None: none loaded).

    routes: the route table (which routes are open to probes). keys_required: API keys are configured. Without
    them the document declares no security at all (no scheme, no requirement, no 401): a client or a fuzzer
    reads what the service does.
    """
    plugin = MarshmallowPlugin()
    access = ("Every operation but the health checks needs an API key." if keys_required
              else "API keys are not configured on this service: no operation needs credentials.")
    spec = APISpec(
        title="omni-mev",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": f"Calibrated success probability of DEX arbitrage opportunities. {access}"},
        **({"security": [{"bearer": []}, {"apiKey": []}]} if keys_required else {}),
    )
    assert plugin.converter is not None  # set by APISpec(plugins=[plugin])
    plugin.converter.add_attribute_function(_attribute_function)
    _components(spec, plugin)
    if keys_required:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
        spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    _scoring(spec)
    _open_inference(spec, model_version)
    _ledger(spec)
    _health_and_status(spec)
    document = spec.to_dict()
    return _open_to_probes(document, routes) if keys_required else _without_security(document)


def openapi_path(route: Route) -> str:
    """A route's path as the document spells it: the one model's name in place, the version a parameter."""
    return route.path.replace("<name>", MODEL_NAME).replace("<version>", "{version}")


def _open_to_probes(document: dict[str, Any], routes: Iterable[Route]) -> dict[str, Any]:
    """The routes the route table opens to probes need no credentials, and are never answered 401."""
    for route in routes:
        if not route.auth:
            for method in route.methods:
                operation = document["paths"][openapi_path(route)][method.lower()]
                operation["security"] = []
                operation["responses"].pop("401", None)
    return document


def _without_security(document: dict[str, Any]) -> dict[str, Any]:
    """The operations' own security (the health checks' open access) and their 401s taken out."""
    for path_item in document["paths"].values():
        for operation in path_item.values():
            if not isinstance(operation, dict):  # a path's shared `parameters`
                continue
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
    return document
