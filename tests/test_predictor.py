"""The Flask-free service layer: one decision rule for every endpoint, windowing, shadow, dispatch hand-off."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omni_mev.cache import NullCache
from omni_mev.config import load_settings
from omni_mev.features import EXAMPLE_FEATURES
from omni_mev.predictor import Opportunity, OpportunityBatch, Predictor
from omni_mev.runtime.loader import load_worker_models
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.trading.dispatcher import PaperDispatcher
from omni_mev.training.export import random_raw_features
from tests.conftest import MODELS, ROOT
from tests.servers import Gunicorn

EXAMPLE = list(EXAMPLE_FEATURES)


def make_predictor(tmp_path: Path, **overrides) -> Predictor:
    settings = load_settings({"AI_DECISION_LOG": tmp_path / "decisions.jsonl", **overrides})
    return Predictor(settings, load_worker_models(settings), NullCache(), PaperDispatcher(settings))


def threshold_splitting(confidence: float) -> float:
    """A threshold between a confidence and its 6-decimal rounding: comparing the rounded value gives the other answer."""
    rounded = round(confidence, 6)
    threshold = rounded if confidence < rounded else confidence
    assert (confidence >= threshold) != (rounded >= threshold)
    return threshold


def reference_confidence(window: np.ndarray) -> float:
    model = OnnxModel(MODELS / "lstm_omni.onnx")
    model.load()
    return float(model.predict(window)[0])


def test_importing_runtime_and_predictor_loads_no_web_stack():
    code = ("import sys, omni_mev.runtime, omni_mev.runtime.loader, omni_mev.runtime.chain, "
            "omni_mev.runtime.onnx_runtime, omni_mev.runtime.torch_runtime, omni_mev.predictor, omni_mev.errors;"
            "print([m for m in ('flask', 'werkzeug', 'gunicorn', 'redis', 'torch') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_decision_is_the_float_against_the_threshold(tmp_path):
    window = np.array([[EXAMPLE]], np.float32)
    confidence = reference_confidence(window)
    threshold = threshold_splitting(confidence)
    predictor = make_predictor(tmp_path, AI_THRESHOLD=repr(threshold))
    single = predictor.predict(Opportunity(EXAMPLE))
    batch = predictor.predict_batch(OpportunityBatch(np.array([EXAMPLE]), None, [None], [True]))
    _, tensor, _ = predictor.infer(window)
    expected = confidence >= threshold
    assert (single.decision, bool(batch.decisions[0]), bool(tensor[0])) == (expected,) * 3
    assert single.confidence == pytest.approx(confidence, abs=1e-7)


def test_batch_windows_grouped_by_history_length_answer_in_order(tmp_path):
    predictor = make_predictor(tmp_path)
    windows = random_raw_features(np.random.default_rng(7), 6, 5)
    opportunities = [Opportunity(w[-1].tolist(), w[length:-1].tolist()) for w, length in zip(windows, [0, 4, 2, 4, 0, 3])]
    batch = OpportunityBatch(np.array([o.features for o in opportunities]), [o.history for o in opportunities],
                             [None] * 6, [True] * 6)
    answers = predictor.predict_batch(batch)
    singles = [predictor.predict(o).confidence for o in opportunities]
    assert answers.confidences.tolist() == pytest.approx(singles, abs=1e-6)
    assert len({round(c, 6) for c in singles}) == 6


def test_batch_hands_shadow_scores_and_exact_confidence_to_the_dispatcher(tmp_path):
    log = tmp_path / "decisions.jsonl"
    predictor = make_predictor(tmp_path, AI_THRESHOLD=0.0, AI_SHADOW_MODEL_PATH=MODELS / "lstm_omni.onnx",
                               AI_DECISION_LOG=log)
    features = random_raw_features(np.random.default_rng(8), 3, 1)[:, 0, :]
    answers = predictor.predict_batch(OpportunityBatch(features.astype(np.float64), None, ["a", None, "c"],
                                                       [True, True, False]))
    assert answers.decisions.all()
    assert answers.executions[0]["status"] == "skipped" and "paper" in answers.executions[0]["reason"]
    assert "opportunity_id" in answers.executions[1]["reason"] and "dispatch: false" in answers.executions[2]["reason"]
    predictor.dispatcher.log.flush()
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["opportunity_id"] == "a"
    assert record["confidence"] == round(float(answers.confidences[0]), 6)
    assert record["shadow_confidence"] == record["confidence"]  # the same model as its own shadow


def test_status_without_a_model(tmp_path):
    predictor = make_predictor(tmp_path, AI_MODEL_PATH=tmp_path / "none.onnx",
                               AI_TORCH_WEIGHTS_PATH=tmp_path / "none.pt")
    status = predictor.status()
    assert not status.ready and status.kind is None and "onnx: its file cannot be read" in status.problem
    assert str(tmp_path) not in status.problem and "none.onnx" in predictor.chain.unavailable_reason
    from omni_mev.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable):
        predictor.predict(Opportunity(EXAMPLE))


def test_endpoints_agree_at_the_rounded_confidence_through_gunicorn():
    confidence = reference_confidence(np.array([[EXAMPLE]], np.float32))
    threshold = threshold_splitting(confidence)
    with Gunicorn({"AI_THRESHOLD": repr(threshold)}, workers=1) as server:
        single = server.post("/predict", {"features": EXAMPLE})[1]
        batch = server.post("/predict/batch", {"items": [{"features": EXAMPLE}]})[1]["results"][0]
        v2 = server.post("/v2/models/lstm_omni/infer", {"inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": EXAMPLE}]})[1]
    decisions = {single["decision"], batch["decision"], next(o for o in v2["outputs"] if o["name"] == "decision")["data"][0]}
    assert decisions == {confidence >= threshold}
    assert single["confidence"] == batch["confidence"] == round(confidence, 6)
