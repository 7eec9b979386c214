"""The Open Inference Protocol (KServe V2) REST API, so Triton/KServe/MLServer clients work unchanged."""
from __future__ import annotations

import uuid
from array import array
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from omni_mev import __version__, metrics
from omni_mev.api.batch import check_batch_size
from omni_mev.api.common import count_outcomes, json_object
from omni_mev.config import Settings
from omni_mev.errors import OmniMevError
from omni_mev.features import FEATURE_NAMES, MAX_SEQUENCE, N_FEATURES
from omni_mev.runtime.base import MODEL_NAME
from omni_mev.schemas import NUMBER_TYPES, flatten_messages, matrix_errors
from omni_mev.serving import scorer

bp = Blueprint("v2", __name__, url_prefix="/v2")
INPUT_NAME = "features"
OUTPUTS = ("confidence", "decision")
INFER_ENDPOINTS = {"v2.infer", "v2.infer_version"}
count_outcomes(bp, endpoints=INFER_ENDPOINTS)


class V2Error(OmniMevError):
    """An error in the protocol's shape: {"error": "..."}, status 400 unless said otherwise."""

    status = 400
    code = "v2_error"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message}


@bp.errorhandler(OmniMevError)
def _protocol_error(error: OmniMevError) -> tuple[Response, int]:
    # Body errors raised by shared helpers (not JSON, too large, no model) keep
    # their status but take the protocol's shape.
    return jsonify({"error": error.message}), error.status


class RequestInputSchema(Schema):
    """$request_input."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    shape = fields.List(fields.Integer(strict=True, validate=validate.Range(min=0)), required=True)
    datatype = fields.String(required=True)
    parameters = fields.Dict()
    data = fields.Raw(required=True)


class RequestOutputSchema(Schema):
    """$request_output."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    parameters = fields.Dict()


class InferenceRequestSchema(Schema):
    """$inference_request."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String()
    parameters = fields.Dict()
    inputs = fields.List(fields.Nested(RequestInputSchema), required=True, validate=validate.Length(min=1))
    outputs = fields.List(fields.Nested(RequestOutputSchema))


_request_schema = InferenceRequestSchema()


def _model(name: str, version: str | None = None):
    """The serving runtime, if `name` (and `version`) designate it; 404 otherwise."""
    if name != MODEL_NAME:
        raise V2Error(f"Unknown model '{name}'; this server serves '{MODEL_NAME}'.", 404)
    runtime = scorer().serving
    if version is not None and (runtime is None or version != runtime.version):
        serving = runtime.version if runtime else "none"
        raise V2Error(f"Unknown version '{version}' of '{MODEL_NAME}'; serving version: {serving}.", 404)
    return runtime


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


@bp.get("")
def server_metadata():
    """$metadata_server_response."""
    return {"name": "omni-mev", "version": __version__, "extensions": []}


@bp.get("/health/live")
def live():
    """200 with an empty body while the server answers."""
    return Response(status=200)


@bp.get("/health/ready")
def ready():
    """200 when this worker's model is loaded; 400 with the reason otherwise (4xx means false)."""
    if scorer().serving is None:
        raise V2Error(scorer().chain.unavailable_reason)
    return Response(status=200)


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    """200 when the named model (and version) is ready to infer."""
    if _model(name, version) is None:
        raise V2Error(scorer().chain.unavailable_reason)
    return Response(status=200)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    """$metadata_model_response."""
    runtime = _model(name, version)
    return {
        "name": MODEL_NAME,
        "versions": [runtime.version] if runtime is not None else [],
        "platform": "onnxruntime_onnx" if runtime is None or runtime.kind == "onnx" else "pytorch_torchscript",
        "inputs": [_tensor(INPUT_NAME, "FP32", [-1, -1, N_FEATURES])],
        "outputs": [_tensor("confidence", "FP32", [-1, 1]), _tensor("decision", "BOOL", [-1, 1])],
        "parameters": {"feature_order": ",".join(FEATURE_NAMES), "max_sequence": MAX_SEQUENCE,
                       "threshold": current_app.config["SETTINGS"].threshold},
    }


def _flat_numbers(data: list) -> np.ndarray | None:
    """A flat JSON array of numbers as float64; None if it holds anything else.

    array.array rejects strings and nulls itself and converts faster than
    np.array; booleans (ints to Python) are caught by the caller's check.
    """
    try:
        return np.frombuffer(array("d", data), dtype=np.float64)
    except TypeError:
        return None


def _features(inputs: list[dict[str, Any]], settings: Settings, may_hold_booleans: bool = True) -> np.ndarray:
    """The `features` input as float32 [batch, seq, 8], or a V2Error saying what is wrong."""
    names = [i["name"] for i in inputs]
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise V2Error(f"Unknown input {unknown[0]!r}; the model takes one input, '{INPUT_NAME}'.")
    if len(names) != 1:
        raise V2Error(f"Input '{INPUT_NAME}' is given {len(names)} times; give it once.")
    tensor = inputs[0]
    if tensor["datatype"] != "FP32":
        raise V2Error(f"Input '{INPUT_NAME}' has datatype {tensor['datatype']!r}; it must be 'FP32'.")
    shape = tensor["shape"]
    if len(shape) not in (2, 3) or shape[-1] != N_FEATURES or 0 in shape:
        raise V2Error(f"Input '{INPUT_NAME}' has shape {shape}; it must be [batch, {N_FEATURES}] "
                      f"or [batch, seq, {N_FEATURES}].")
    if len(shape) == 3 and shape[1] > MAX_SEQUENCE:
        raise V2Error(f"Input '{INPUT_NAME}' has sequence length {shape[1]}; at most {MAX_SEQUENCE}.")
    check_batch_size(shape[0], settings)
    data = tensor["data"]
    if not isinstance(data, list):
        raise V2Error(f"Input '{INPUT_NAME}' data must be a JSON array (flat or nested).")
    values = _flat_numbers(data) if data and not isinstance(data[0], list) else None
    if values is None:
        try:
            values = np.array(data)
        except ValueError:  # ragged nesting
            values = np.array(data, dtype=object)
    if values.ndim > 1 and list(values.shape) != shape:
        raise V2Error(f"Input '{INPUT_NAME}' data is nested as {list(values.shape)}; its shape says {shape}.")
    expected = int(np.prod(shape))
    if values.size != expected:
        raise V2Error(f"Input '{INPUT_NAME}' holds {values.size} values; shape {shape} needs {expected}.")
    # numpy reads strings and nulls into other dtypes, but JSON booleans into
    # numbers: those are looked for unless the raw body holds no true/false.
    if values.dtype.kind not in "fi" or (
            may_hold_booleans and not set(map(type, values.ravel().tolist())) <= NUMBER_TYPES):
        raise V2Error(f"Input '{INPUT_NAME}' data must hold numbers only (no strings, booleans, nulls or "
                      "ragged arrays).")
    rows = values.astype(np.float64, copy=False).reshape(-1, N_FEATURES)
    errors = matrix_errors(rows, limit=5)
    if errors:
        details = "; ".join(
            f"element {row // (shape[1] if len(shape) == 3 else 1)}"
            + (f", step {row % shape[1]}" if len(shape) == 3 else "") + f": {name}: {message}"
            for row, name, message in errors)
        raise V2Error(f"Input '{INPUT_NAME}' has invalid values: {details}")
    return rows.astype(np.float32).reshape(shape[0], shape[1] if len(shape) == 3 else 1, N_FEATURES)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer", endpoint="infer_version")
def infer(name: str, version: str | None = None):
    """$inference_request -> $inference_response."""
    _model(name, version)
    settings: Settings = current_app.config["SETTINGS"]
    raw = request.get_data(cache=False)
    try:
        payload = _request_schema.load(json_object(raw))
    except ValidationError as error:
        flat = flatten_messages(error.messages)
        raise V2Error("Invalid inference request: "
                      + "; ".join(f"{k}: {' '.join(v)}" for k, v in flat.items())) from None
    wanted = [o["name"] for o in payload.get("outputs") or []] or list(OUTPUTS)
    unknown = [n for n in wanted if n not in OUTPUTS]
    if unknown:
        raise V2Error(f"Unknown output {unknown[0]!r}; the model produces {', '.join(OUTPUTS)}.")
    no_booleans = b"true" not in raw and b"false" not in raw
    scored = scorer().score(_features(payload["inputs"], settings, may_hold_booleans=not no_booleans))
    confidences = np.round(scored.confidences.astype(np.float64), 6)
    decisions = confidences >= settings.threshold
    metrics.count_decisions(decisions)
    batch = len(confidences)
    tensors = {
        "confidence": {**_tensor("confidence", "FP32", [batch, 1]), "data": confidences.tolist()},
        "decision": {**_tensor("decision", "BOOL", [batch, 1]), "data": decisions.tolist()},
    }
    return {
        "model_name": MODEL_NAME,
        "model_version": scored.model_version,
        "id": payload.get("id") or uuid.uuid4().hex,
        "parameters": {"threshold": settings.threshold, "mode": settings.mode, "model_type": scored.model_type,
                       "inference_time_ms": round(scored.inference_ms, 4)},
        "outputs": [tensors[n] for n in wanted],
    }
