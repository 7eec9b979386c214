"""Training end to end on a tiny budget, export parity, and the shipped artifacts."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from omni_mev.features import EXAMPLE_FEATURES, FEATURE_NAMES
from omni_mev.model.lstm import load_state
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.training.export import export_onnx, parity, random_raw_features
from omni_mev.training.train import TrainConfig, train
from tests.conftest import MODELS

TINY = TrainConfig(opportunities=6_000, hidden_size=8, batch_size=64, max_epochs=2, batches_per_epoch=8,
                   patience=1, threads=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    card = train(TINY, out, out / "docs")
    return out, card


def test_tiny_training_writes_all_artifacts(tiny_run):
    out, card = tiny_run
    onnx_bytes = (out / "lstm_omni.onnx").read_bytes()
    assert card["version"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert json.loads((out / "lstm_omni.json").read_text()) == card
    assert (out / "lstm_omni.pt").stat().st_size > 0 and (out / "docs" / "reliability.png").stat().st_size > 0
    assert card["inputs"]["features"]["order"] == list(FEATURE_NAMES)
    expected = {"lstm_with_history", "lstm_single_vector", "logistic_regression", "hist_gradient_boosting", "oracle"}
    assert set(card["test_metrics"]) == expected
    for metrics in card["test_metrics"].values():
        assert 0.0 <= metrics["auc_roc"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
        assert set(metrics["at"]) == {"recommended", "default"}
    assert card["onnx_parity_max_abs_diff"] <= 1e-5
    assert 0.0 <= card["thresholds"]["recommended"] <= 1.0
    assert card["training"]["split"]["train"] > card["training"]["split"]["test"]


def test_training_is_deterministic(tiny_run, tmp_path):
    out, _ = tiny_run
    train(TINY, tmp_path)
    first = torch.load(out / "lstm_omni.pt", weights_only=True)
    second = torch.load(tmp_path / "lstm_omni.pt", weights_only=True)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_export_keeps_batch_and_sequence_dynamic(tmp_path):
    model = load_state(MODELS / "lstm_omni.pt")
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, True, False] and dims[2].dim_value == 8
    assert parity(model, path, seed=5) <= 1e-5


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (2, 3), (17, 32), (1000, 1), (9, 20)])
def test_shipped_onnx_matches_shipped_weights(batch, seq):
    onnx_model = OnnxModel(MODELS / "lstm_omni.onnx")
    onnx_model.load()
    torch_model = load_state(MODELS / "lstm_omni.pt")
    x = random_raw_features(np.random.default_rng(batch * 100 + seq), batch, seq)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy().reshape(-1)
    assert np.abs(onnx_model.predict(x) - expected).max() <= 1e-5


def test_shipped_card_describes_shipped_model():
    card = json.loads((MODELS / "lstm_omni.json").read_text())
    digest = hashlib.sha256((MODELS / "lstm_omni.onnx").read_bytes()).hexdigest()
    assert card["version"] == digest
    assert card["inputs"]["features"]["order"] == list(FEATURE_NAMES)
    assert card["created_by"].startswith("omni-mev train")
    model = OnnxModel(MODELS / "lstm_omni.onnx")
    model.load()
    confidence = float(model.predict(np.array([[EXAMPLE_FEATURES]], np.float32))[0])
    assert 0.0 < confidence < 1.0
