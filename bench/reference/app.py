"""The architecture omni-mev replaces, as the benchmark's reference: FastAPI on uvicorn.

Same ONNX model (one session per worker, 1 thread, no spinning), pydantic
validation of the same 8 features with the same bounds, same response fields.
Run: uvicorn bench.reference.app:app --workers 2 --loop uvloop --http httptools
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel, Field, field_validator

MODEL_PATH = Path(os.environ.get("AI_MODEL_PATH", Path(__file__).resolve().parents[2] / "models" / "lstm_omni.onnx"))
THRESHOLD = float(os.environ.get("AI_THRESHOLD", "0.78"))
MODE = "LIVE" if os.environ.get("LIVE_TRADING", "false").lower() == "true" else "SIMULATION"

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
_data = MODEL_PATH.read_bytes()
session = ort.InferenceSession(_data, _options, providers=["CPUExecutionProvider"])
VERSION = hashlib.sha256(_data).hexdigest()[:12]
INPUT = session.get_inputs()[0].name
BOUNDS = [(0, None, False), (0, None, False), (2, 6, True), (0, None, False), (0, 1, False), (0, 1, False),
          (1, 4, True), (0, None, False)]


class PredictRequest(BaseModel):
    features: Annotated[list[float], Field(min_length=8, max_length=8)]

    @field_validator("features")
    @classmethod
    def in_bounds(cls, values: list[float]) -> list[float]:
        for value, (lo, hi, integer) in zip(values, BOUNDS):
            if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
                raise ValueError("feature out of range")
            if integer and value != int(value):
                raise ValueError("count feature must be an integer")
        return values


app = FastAPI()


# async: inference takes tens of microseconds, so running it on the event loop
# beats handing it to a thread pool; this is the reference's fastest form.
@app.post("/predict")
async def predict(request: PredictRequest) -> dict:
    started = time.perf_counter()
    confidence = float(session.run(None, {INPUT: np.array([[request.features]], dtype=np.float32)})[0][0, 0])
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return {
        "decision": confidence >= THRESHOLD,
        "confidence": round(confidence, 6),
        "threshold": THRESHOLD,
        "mode": MODE,
        "inference_time_ms": round(elapsed_ms, 4),
        "model_type": "onnx",
        "model_version": VERSION,
    }


@app.get("/health")
async def health() -> dict:
    return {"status": "ok", "model_type": "onnx", "model_version": VERSION}
