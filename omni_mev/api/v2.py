"""The Open Inference Protocol (KServe V2) REST routes: HTTP requests decoded (JSON, or JSON with binary tensors)
into the core's payload (omni_mev.core.v2), and its answers encoded."""
from __future__ import annotations

from typing import Any

from flask import current_app
from marshmallow import ValidationError

from omni_mev.api import predictor_of
from omni_mev.api.direct import DirectRequest
from omni_mev.core import v2_binary
from omni_mev.core.answers import Answer
from omni_mev.core.schemas import flatten_messages
from omni_mev.core.scoring import may_hold_booleans
from omni_mev.core.v2 import (OUTPUT_DATATYPES, V2Error, live_body, metadata_of, model_status,
                              ready_body, request_schema, run_inference, tensor)
from omni_mev.jsonio import dumps, loads_object
from omni_mev.runtime.base import MODEL_NAME


def live() -> dict[str, Any]:
    """{"live": true} while the server answers."""
    return live_body()


def ready() -> dict[str, Any]:
    """{"ready": true} when this worker's model is loaded; 400 with the reason otherwise."""
    return ready_body(predictor_of(current_app).status())


def model_ready(name: str, version: str | None = None) -> dict[str, Any]:
    """{"name", "ready": true} when the named model (and version) is ready to infer; 404 for another model."""
    return {"name": name, **ready_body(model_status(predictor_of(current_app).status(), name, version))}


def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
    """$metadata_model_response."""
    return metadata_of(predictor_of(current_app), name, version)


def _infer(request: DirectRequest, name: str, version: str | None) -> dict[str, Any] | Answer:
    """$inference_request -> $inference_response, JSON or with binary tensors; nothing is dispatched from this
    protocol."""
    predictor = predictor_of(request.app)
    model_status(predictor.status(), name, version)
    header, binary = v2_binary.split_body(request.body, request.environ.get(v2_binary.ENVIRON_KEY))
    try:
        payload = request_schema.load(loads_object(header))
    except ValidationError as error:
        flat = flatten_messages(error.messages)
        raise V2Error("Invalid inference request: "
                      + "; ".join(f"{k}: {' '.join(v)}" for k, v in flat.items())) from None
    v2_binary.attach_binary_inputs(payload["inputs"], binary)
    result = run_inference(predictor, name, version, payload, may_hold_booleans(header))
    answer: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": result.model_version, "id": result.id,
                              "parameters": result.parameters, "outputs": []}
    in_binary = v2_binary.binary_outputs(payload.get("parameters"), payload.get("outputs"), result.outputs)
    blobs = []
    for output in result.outputs:
        encoded = tensor(output, OUTPUT_DATATYPES[output], [result.batch, 1])
        if output in in_binary:
            blobs.append(v2_binary.encode(encoded["datatype"], result.values[output]))
            encoded["parameters"] = {v2_binary.BINARY_SIZE: len(blobs[-1])}
        else:
            encoded["data"] = result.values[output].tolist()
        answer["outputs"].append(encoded)
    if not blobs:
        return answer
    head = dumps(answer)
    return Answer(200, b"".join([head, *blobs]), {v2_binary.HEADER: str(len(head))}, v2_binary.CONTENT_TYPE)


def infer(request: DirectRequest) -> dict[str, Any] | Answer:
    """Inference on the serving model."""
    return _infer(request, request.params["name"], None)


def infer_version(request: DirectRequest) -> dict[str, Any] | Answer:
    """Inference on a named version (which must be the serving one)."""
    return _infer(request, request.params["name"], request.params["version"])
