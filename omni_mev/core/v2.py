"""The Open Inference Protocol (KServe V2): its rules, whatever the transport. The REST routes (omni_mev.api.v2) and
the gRPC service (omni_mev.stream.kserve) decode their requests into the same payload and answer from the same
`Inference`, so Triton, KServe and MLServer clients work unchanged on both."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np
from marshmallow import EXCLUDE, Schema, fields, validate

from omni_mev.core import v2_binary
from omni_mev.core.schemas import NUMBER_TYPES, float_values, matrix_errors, valid_id
from omni_mev.core.scoring import CONFIDENCE_DECIMALS, check_batch_size
from omni_mev.errors import OmniMevError
from omni_mev.features import FEATURE_NAMES, MAX_SEQUENCE, N_FEATURES
from omni_mev.predictor import ModelStatus, Predictor
from omni_mev.runtime.base import MODEL_NAME
from omni_mev.version import __version__

INPUT_NAME = "features"
# Optional: the callers' ids of the opportunities, so that the ledger keeps them.
ID_INPUT = "opportunity_id"
OUTPUT_DATATYPES = {"confidence": "FP32", "decision": "BOOL", "plausible": "BOOL"}
OUTPUTS = tuple(OUTPUT_DATATYPES)


class V2Error(OmniMevError):
    """An error in the protocol's shape: {"error": "..."}, status 400 unless said otherwise."""

    status = 400
    code = "v2_error"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def protocol_error_body(error: OmniMevError) -> dict[str, Any]:
    """The protocol's error shape, for every error of these routes (not JSON, too large, no model too)."""
    return {"error": error.message}


class RequestInputSchema(Schema):
    """$request_input."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    shape = fields.List(fields.Integer(strict=True, validate=validate.Range(min=0)), required=True)
    datatype = fields.String(required=True)
    parameters = fields.Dict()
    # Or, with the binary tensor extension, `parameters.binary_data_size` and the data after the JSON.
    data = fields.Raw()


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


request_schema = InferenceRequestSchema()


def model_status(status: ModelStatus, name: str, version: str | None = None) -> ModelStatus:
    """The serving model's status, if `name` (and `version`) designate it; 404 otherwise."""
    if name != MODEL_NAME:
        raise V2Error(f"Unknown model '{name}'; this server serves '{MODEL_NAME}'.", 404)
    if version is not None and version != status.version:
        raise V2Error(f"Unknown version '{version}' of '{MODEL_NAME}'; serving version: {status.version or 'none'}.",
                      404)
    return status


def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def server_metadata() -> dict[str, Any]:
    """$metadata_server_response."""
    return {"name": "omni-mev", "version": __version__, "extensions": [v2_binary.EXTENSION]}


def live_body() -> dict[str, Any]:
    """$live_server_response, while the server answers."""
    return {"live": True}


def ready_body(status: ModelStatus) -> dict[str, Any]:
    """$ready_server_response ({"ready": true}, as KServe's servers answer and its client reads) when a model is
    loaded; a 400 with the reason otherwise: the status is the signal for Triton's clients (4xx means false)."""
    if not status.ready:
        raise V2Error(status.problem or "no model is loaded")
    return {"ready": True}


def metadata_of(predictor: Predictor, name: str, version: str | None = None) -> dict[str, Any]:
    """The model's metadata, whatever the transport (the gRPC service answers the same)."""
    status = model_status(predictor.status(), name, version)
    return {
        "name": MODEL_NAME,
        "versions": [status.version] if status.ready else [],
        "platform": "pytorch_torchscript" if status.kind == "pytorch" else "onnxruntime_onnx",
        "inputs": [tensor(INPUT_NAME, "FP32", [-1, -1, N_FEATURES])],
        "outputs": [tensor(output, datatype, [-1, 1]) for output, datatype in OUTPUT_DATATYPES.items()],
        "parameters": {"feature_order": ",".join(FEATURE_NAMES), "max_sequence": MAX_SEQUENCE,
                       "threshold": predictor.threshold},
    }


def _numbers_only(data: list[Any], depth: int) -> bool:
    """Whether every leaf of regularly nested JSON arrays is a number (a boolean is not)."""
    leaves: Iterable[Any] = data
    for _ in range(depth - 1):
        leaves = chain.from_iterable(leaves)
    return set(map(type, leaves)) <= NUMBER_TYPES


def _inputs(inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the features input, the optional opportunity_id input), each given at most once."""
    names = [i["name"] for i in inputs]
    unknown = [n for n in names if n not in (INPUT_NAME, ID_INPUT)]
    if unknown:
        raise V2Error(f"Unknown input {unknown[0]!r}; the model takes '{INPUT_NAME}' (and optionally "
                      f"'{ID_INPUT}').")
    for name in (INPUT_NAME, ID_INPUT):
        if names.count(name) > 1:
            raise V2Error(f"Input '{name}' is given {names.count(name)} times; give it once.")
    if INPUT_NAME not in names:
        raise V2Error(f"Input '{INPUT_NAME}' is missing.")
    without = [i["name"] for i in inputs if "data" not in i]
    if without:
        raise V2Error(f"Input '{without[0]}' has no data: give `data`, or `parameters.{v2_binary.BINARY_SIZE}` and "
                      f"the bytes after the JSON ({v2_binary.HEADER}).")
    by_name = {i["name"]: i for i in inputs}
    return by_name[INPUT_NAME], by_name.get(ID_INPUT)


def _ids(tensor: dict[str, Any] | None, batch: int) -> list[str] | None:
    """The opportunity ids, BYTES [batch] (or [batch, 1]) of strings of 1 to 128 characters, without NUL."""
    if tensor is None:
        return None
    data = tensor["data"]
    if isinstance(data, list) and data and isinstance(data[0], bytes):  # binary: UTF-8 on the wire
        try:
            data = [element.decode("utf-8") for element in data]
        except UnicodeDecodeError:
            raise V2Error(f"Input '{ID_INPUT}' holds an id that is not UTF-8.") from None
    if (tensor["datatype"] != "BYTES" or tensor["shape"] not in ([batch], [batch, 1]) or not isinstance(data, list)
            or len(data) != batch or not all(valid_id(i) for i in data)):
        raise V2Error(f"Input '{ID_INPUT}' must be BYTES with shape [{batch}], holding one string of 1 to 128 "
                      f"characters (NUL excepted) per row of '{INPUT_NAME}'.")
    return data


def _features(tensor: dict[str, Any], max_batch_size: int, booleans_possible: bool = True) -> np.ndarray:
    """The `features` input as sent (float64) [batch, seq, 8], or a V2Error saying what is wrong."""
    if tensor["datatype"] != "FP32":
        raise V2Error(f"Input '{INPUT_NAME}' has datatype {tensor['datatype']!r}; it must be 'FP32'.")
    shape = tensor["shape"]
    if len(shape) not in (2, 3) or shape[-1] != N_FEATURES or 0 in shape:
        raise V2Error(f"Input '{INPUT_NAME}' has shape {shape}; it must be [batch, {N_FEATURES}] "
                      f"or [batch, seq, {N_FEATURES}].")
    if len(shape) == 3 and shape[1] > MAX_SEQUENCE:
        raise V2Error(f"Input '{INPUT_NAME}' has sequence length {shape[1]}; at most {MAX_SEQUENCE}.")
    check_batch_size(shape[0], max_batch_size)
    data = tensor["data"]
    if isinstance(data, np.ndarray):  # binary data: FP32 by construction, its size checked against the shape
        return _checked_rows(data.astype(np.float64), shape)
    if not isinstance(data, list):
        raise V2Error(f"Input '{INPUT_NAME}' data must be a JSON array (flat or nested).")
    values = float_values(data) if data and not isinstance(data[0], list) else None
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
    # numbers: the JSON values themselves are typed unless the raw body holds
    # no true/false at all.
    if values.dtype.kind not in "fi" or (booleans_possible and not _numbers_only(data, values.ndim)):
        raise V2Error(f"Input '{INPUT_NAME}' data must hold numbers only (no strings, booleans, nulls or "
                      "ragged arrays).")
    return _checked_rows(values.astype(np.float64, copy=False), shape)


def _checked_rows(values: np.ndarray, shape: list[int]) -> np.ndarray:
    """The values as [batch, seq, 8], each within the features' bounds, or a V2Error naming the first bad ones."""
    rows = values.reshape(-1, N_FEATURES)
    errors = matrix_errors(rows, limit=5)
    if errors:
        details = "; ".join(
            f"element {row // (shape[1] if len(shape) == 3 else 1)}"
            + (f", step {row % shape[1]}" if len(shape) == 3 else "") + f": {name}: {message}"
            for row, name, message in errors)
        raise V2Error(f"Input '{INPUT_NAME}' has invalid values: {details}")
    return rows.reshape(shape[0], shape[1] if len(shape) == 3 else 1, N_FEATURES)


@dataclass(frozen=True)
class Inference:
    """One inference request's answer, before any transport encodes it."""

    model_version: str
    id: str
    parameters: dict[str, Any]
    outputs: list[str]
    values: dict[str, np.ndarray]
    batch: int


def run_inference(predictor: Predictor, name: str, version: str | None, payload: dict[str, Any],
                  booleans_possible: bool = True) -> Inference:
    """The protocol's inference on decoded tensors (`data` a JSON list or a numpy array), whatever the transport:
    the REST routes here and the gRPC service (omni_mev.stream.kserve) share it. V2Error says what is wrong."""
    model_status(predictor.status(), name, version)
    wanted = [o["name"] for o in payload.get("outputs") or []] or list(OUTPUTS)
    unknown = [n for n in wanted if n not in OUTPUTS]
    if unknown:
        raise V2Error(f"Unknown output {unknown[0]!r}; the model produces {', '.join(OUTPUTS)}.")
    features, ids = _inputs(payload["inputs"])
    windows = _features(features, predictor.settings.max_batch_size, booleans_possible)
    scores, decisions, implausible = predictor.infer(windows, _ids(ids, len(windows)))
    values = {"confidence": np.round(scores.confidences.astype(np.float64), CONFIDENCE_DECIMALS),
              "decision": decisions, "plausible": np.array([not checks for checks in implausible])}
    parameters = {"threshold": predictor.threshold, "mode": predictor.settings.mode,
                  "model_type": scores.model_type, "inference_time_ms": round(scores.inference_ms, 4)}
    failed = {str(index): list(checks) for index, checks in enumerate(implausible) if checks}
    if failed:
        parameters["implausible"] = failed
    return Inference(scores.model_version, payload.get("id") or uuid.uuid4().hex, parameters, wanted, values,
                     len(decisions))


