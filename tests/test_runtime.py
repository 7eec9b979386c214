"""Model runtimes and the fallback chain: ONNX first, PyTorch when ONNX cannot serve."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from omni_mev.features import EXAMPLE_FEATURES
from omni_mev.runtime.base import ModelLoadError, ModelRuntime
from omni_mev.runtime.chain import FallbackChain
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.runtime.torch_runtime import TorchModel
from omni_mev.training.export import random_raw_features
from tests.conftest import MODELS, ROOT

EXAMPLE = np.array([[EXAMPLE_FEATURES]], np.float32)


def test_onnx_loads_and_versions_by_sha256():
    model = OnnxModel(MODELS / "lstm_omni.onnx")
    model.load()
    digest = hashlib.sha256((MODELS / "lstm_omni.onnx").read_bytes()).hexdigest()
    assert model.ready and model.version == digest[:12]
    assert model.predict(EXAMPLE).shape == (1,)


def test_onnx_and_pytorch_agree_on_shipped_files():
    onnx_model, torch_model = OnnxModel(MODELS / "lstm_omni.onnx"), TorchModel(MODELS / "lstm_omni.pt")
    onnx_model.load()
    torch_model.load()
    x = random_raw_features(np.random.default_rng(1), 64, 12)
    assert np.abs(onnx_model.predict(x) - torch_model.predict(x)).max() <= 1e-5


@pytest.mark.parametrize("runtime", [OnnxModel, TorchModel])
def test_missing_and_corrupt_files(tmp_path, runtime):
    with pytest.raises(ModelLoadError, match="cannot read"):
        runtime(tmp_path / "absent").load()
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ModelLoadError, match="cannot load"):
        runtime(corrupt).load()


def test_chain_falls_back_to_pytorch_when_onnx_missing(model_copy):
    model_copy.unlink()
    events = []
    chain = FallbackChain([OnnxModel(model_copy, role="onnx"), TorchModel(model_copy.with_suffix(".pt"), role="pytorch")],
                          on_fallback=lambda *e: events.append(e))
    assert chain.load().kind == "pytorch"
    assert events == [("load", "onnx", "pytorch")]
    assert "onnx" in chain.errors
    reference = OnnxModel(MODELS / "lstm_omni.onnx")
    reference.load()
    confidences, runtime = chain.predict(EXAMPLE)
    assert runtime.kind == "pytorch"
    assert confidences[0] == pytest.approx(float(reference.predict(EXAMPLE)[0]), abs=1e-5)


class _FailsOnRequest(ModelRuntime):
    """A runtime that loads but raises on predict: stands in for an ONNX session failing at run time."""

    kind = "onnx"

    def __init__(self):
        super().__init__(MODELS / "lstm_omni.onnx", role="onnx")
        self.calls = 0

    @property
    def ready(self):
        return self.version is not None

    @property
    def device(self):
        return "CPUExecutionProvider"

    def _load(self, data):
        pass

    def predict(self, features):
        self.calls += 1
        raise RuntimeError("session failed")


def test_runtime_failure_answers_with_next_and_retries_primary():
    primary = _FailsOnRequest()
    fallback = TorchModel(MODELS / "lstm_omni.pt", role="pytorch")
    events = []
    chain = FallbackChain([primary, fallback], on_fallback=lambda *e: events.append(e))
    assert chain.load() is primary and not fallback.ready  # fallback not loaded until needed
    confidences, runtime = chain.predict(EXAMPLE)
    assert runtime is fallback and 0 <= confidences[0] <= 1
    chain.predict(EXAMPLE)
    assert primary.calls == 2  # the primary is tried again on the next request
    assert events == [("runtime", "onnx", "pytorch")] * 2
    assert chain.active is primary


class _AnswersNaN(_FailsOnRequest):
    """A runtime that loads and answers, but with a confidence that is not a number."""

    def predict(self, features):
        self.calls += 1
        return np.full(len(features), np.nan, np.float32)


def test_non_finite_confidence_is_a_failure_of_that_runtime():
    primary = _AnswersNaN()
    fallback = TorchModel(MODELS / "lstm_omni.pt", role="pytorch")
    events = []
    chain = FallbackChain([primary, fallback], on_fallback=lambda *e: events.append(e))
    chain.load()
    confidences, runtime = chain.predict(EXAMPLE)
    assert runtime is fallback and np.isfinite(confidences).all()
    assert events == [("runtime", "onnx", "pytorch")]
    assert "not a finite number" in chain.errors["onnx"]


def test_every_runtime_non_finite_is_unavailable_not_null():
    chain = FallbackChain([_AnswersNaN()])
    chain.load()
    from omni_mev.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="failed on a request"):
        chain.predict(EXAMPLE)


def test_nothing_loads(tmp_path):
    chain = FallbackChain([OnnxModel(tmp_path / "a.onnx", role="onnx"), TorchModel(tmp_path / "a.pt", role="pytorch")])
    assert chain.load() is None and not chain.ready
    assert "a.onnx" in chain.unavailable_reason and "a.pt" in chain.unavailable_reason
    from omni_mev.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable):
        chain.predict(EXAMPLE)


def test_app_request_answered_by_pytorch_when_onnx_fails(make_app, monkeypatch):
    from omni_mev import metrics

    app = make_app()
    onnx_model = app.extensions["omni_mev.predictor"].chain.runtimes[0]
    expected = float(onnx_model.predict(EXAMPLE)[0])

    def broken(features):
        raise RuntimeError("onnxruntime failed")

    monkeypatch.setattr(onnx_model, "predict", broken)
    fallbacks = metrics.MODEL_FALLBACKS.labels(reason="runtime", from_type="onnx", to_type="pytorch")
    before = fallbacks._value.get()
    body = app.test_client().post("/predict", json={"features": list(EXAMPLE_FEATURES)}).get_json()
    assert body["model_type"] == "pytorch"
    assert body["confidence"] == pytest.approx(expected, abs=1e-5)
    assert fallbacks._value.get() == before + 1


def test_torch_not_imported_while_onnx_serves():
    code = (
        "import sys; from omni_mev import create_app; app = create_app();"
        "r = app.test_client().post('/predict', json={'features': [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]});"
        "assert r.status_code == 200, r.data; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "OMNI_MEV_ENV_FILE": "/nonexistent", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
