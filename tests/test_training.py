"""Training end to end on a tiny budget (simulated data and the documented file format), export parity, determinism,
the families, and the shipped artifacts."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from omni_mev.devices import cuda_devices
from omni_mev.features import EXAMPLE_FEATURES, FEATURE_NAMES
from omni_mev.model.lstm import load_state
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.training.export import export_onnx, parity, random_raw_features
from omni_mev.training.report import served_row
from omni_mev.training.train import TrainConfig, train
from tests.conftest import MODELS, ROOT

TINY = TrainConfig(opportunities=6_000, hidden_size=8, batch_size=64, max_epochs=2, batches_per_epoch=8,
                   patience=1, threads=1)
EXAMPLE_DATA = ROOT / "examples" / "data" / "outcomes.csv"
SMALL = ["--hidden-size", "12", "--max-epochs", "4", "--batches-per-epoch", "20", "--batch-size", "256",
         "--patience", "3"]


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
    expected = {"lstm_with_history", "lstm_single_vector", "logistic_regression", "hist_gradient_boosting", "ensemble",
                "oracle"}
    assert set(card["test_metrics"]) == expected
    assert card["family"] in ("lstm", "trees", "ensemble") and card["oracle"].startswith("present")
    assert card["training"]["stopped_by"] in ("max_epochs", "patience")
    for metrics in card["test_metrics"].values():
        assert 0.0 <= metrics["auc_roc"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
        assert set(metrics["at"]) == {"recommended", "default", "decision"}
    assert card["onnx_parity_max_abs_diff"] <= 1e-5
    assert 0.0 <= card["thresholds"]["recommended"] <= 1.0
    # The simulator reports realised PnL: the decision threshold maximises it on validation, on enough rows.
    thresholds = card["thresholds"]
    assert 0.0 < thresholds["decision"] < 1.0 and thresholds["decision_rule"].startswith("maximises the realised PnL")
    assert thresholds["decision_evidence"]["approved"] >= 30
    assert card["training"]["split"]["train"] > card["training"]["split"]["test"]
    # What the test ECE rests on: a tiny run's test period is too few rows for it to mean much, and says so.
    evidence = card["ece_evidence"]
    assert evidence["rows"] == card["training"]["split"]["test"] and 0 < evidence["successes"] < evidence["rows"]
    assert evidence["noise_floor"] > 0.015 and evidence["enough"] is False and "too few rows" in evidence["meaning"]
    for name, (low, high) in card["support"].items():  # the plausibility support: past the training extremes
        assert low <= card["training_range"][name][0] and high >= card["training_range"][name][1]


def test_training_is_deterministic(tiny_run, tmp_path):
    out, card = tiny_run
    again = train(TINY, tmp_path)
    assert again["version"] == card["version"]  # the same ONNX bytes
    first = torch.load(out / "lstm_omni.pt", weights_only=True)
    second = torch.load(tmp_path / "lstm_omni.pt", weights_only=True)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_the_device_does_not_change_what_training_learns(tiny_run, tmp_path):
    """train --device auto takes a GPU where there is one; the same seed and data give the same card within noise."""
    out, card = tiny_run
    other = train(replace(TINY, device="auto"), tmp_path)
    gpus = cuda_devices()
    assert other["training"]["device"] == (f"cuda:0 ({gpus[0]})" if gpus else "cpu") and card["training"]["device"] == "cpu"
    for name, metrics in card["test_metrics"].items():
        assert abs(other["test_metrics"][name]["auc_roc"] - metrics["auc_roc"]) <= 0.002, name
    if not gpus:  # the same device: the same bytes
        assert other["version"] == card["version"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omni_mev.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_own_data_from_check_to_evaluation(tmp_path):
    """docs/model.md's walk-through, one command per step, on the shipped example file."""
    assert _cli("data", "check", str(EXAMPLE_DATA)).returncode == 0
    trained = _cli("train", "--data", str(EXAMPLE_DATA), "--output", str(tmp_path), *SMALL)
    assert trained.returncode == 0, trained.stderr
    assert "epoch 1/4" in trained.stdout and "at most" in trained.stdout  # one line per epoch, with the ETA
    summary = json.loads(trained.stdout.splitlines()[-1])
    card = json.loads((tmp_path / "lstm_omni.json").read_text())
    assert summary["version"] == card["version_short"] and card["oracle"].startswith("absent")
    assert "oracle" not in card["test_metrics"] and card["thresholds"]["recommended_rule"].startswith("maximises")
    assert card["onnx_parity_max_abs_diff"] <= 1e-5
    # The file it was trained on: only the held-out test period is scored, with a warning saying so.
    evaluated = _cli("evaluate", "--model", str(tmp_path / "lstm_omni.onnx"), "--data", str(EXAMPLE_DATA))
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    held_out = card["training"]["split"]["test"]
    assert report["opportunities"] == held_out == 600 and report["rows_in_data"] == 4000
    assert report["model_version"] == card["version_short"]
    assert 0.5 < report["auc_roc"] <= 1.0 and 0.0 <= report["ece"] <= 0.2
    assert report["auc_roc"] == pytest.approx(card["test_metrics"][served_row(card)]["auc_roc"], abs=2e-3)
    assert "3,400 of 4,000 rows were observed up to" in evaluated.stderr and "--all" in evaluated.stderr
    everything = json.loads(_cli("evaluate", "--model", str(tmp_path / "lstm_omni.onnx"), "--data",
                                 str(EXAMPLE_DATA), "--all", "--png", str(tmp_path / "mine.png")).stdout)
    assert everything["opportunities"] == 4000 and "warning" not in everything
    assert (tmp_path / "mine.png").read_bytes().startswith(b"\x89PNG") and everything["reliability_png"]
    table = _cli("card", str(tmp_path / "lstm_omni.json"))
    assert table.returncode == 0 and f"serves **{card['family']}**" in table.stdout
    assert "Oracle" not in table.stdout and "| Ensemble: LSTM + trees, blended |" in table.stdout
    served = OnnxModel(tmp_path / "lstm_omni.onnx")
    served.load()  # the service can serve what training wrote (test_training_is_deterministic trains twice)


def test_evaluate_refuses_data_from_the_training_period_alone():
    """The shipped model was fitted on simulated days the example file also covers: nothing is held out."""
    result = _cli("evaluate", "--model", str(ROOT / "models" / "lstm_omni.onnx"), "--data", str(EXAMPLE_DATA))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "4,000 of 4,000 rows were observed up to 2024-02-27T11:08:13.508+00:00" in result.stderr
    assert "No row is left to score" in result.stderr and "--all" in result.stderr


def test_evaluate_names_a_model_it_cannot_load(tmp_path):
    result = _cli("evaluate", "--model", str(tmp_path / "absent.onnx"), "--data", str(EXAMPLE_DATA))
    assert result.returncode == 2 and "absent.onnx" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("family", ["trees", "ensemble"])
def test_every_family_exports_one_servable_graph(tmp_path, family):
    trained = _cli("train", "--data", str(EXAMPLE_DATA), "--output", str(tmp_path), "--family", family, *SMALL)
    assert trained.returncode == 0, trained.stderr
    card = json.loads((tmp_path / "lstm_omni.json").read_text())
    assert card["family"] == family and card["onnx_parity_max_abs_diff"] <= 1e-5
    assert set(card["test_metrics"]) >= {"lstm_single_vector", "hist_gradient_boosting", "ensemble"}
    model = OnnxModel(tmp_path / "lstm_omni.onnx")
    model.load()
    x = random_raw_features(np.random.default_rng(1), 5, 4)
    assert model.predict(x).shape == (5,) and np.all((model.predict(x) > 0) & (model.predict(x) < 1))
    assert (tmp_path / "lstm_omni.pt").exists()  # the PyTorch fallback: the LSTM member


def test_accuracy_on_a_logistic_truth_that_is_not_the_simulator(tmp_path):
    from bench.logistic_truth import run

    result = run(20_000, seed=3, config_overrides={"hidden_size": 16, "batch_size": 512, "max_epochs": 20,
                                                    "batches_per_epoch": 60, "patience": 4}, output=tmp_path)
    assert result["truth_auc"] - result["model_auc"] <= 0.02
    assert result["model_ece"] <= 0.03


def test_defaults_come_close_to_a_truth_with_hidden_stream_state(tmp_path):
    """The small version of `python -m bench.truth_generators`: 40,000 rows of the `latency` generator (hidden
    per-scanner regimes, interactions, 12% successes), trained with the defaults alone."""
    from bench.truth_generators import against_truth

    result = against_truth("latency", 40_000, 2, tmp_path)
    assert result["budget"]["from_flags"] == [] and result["budget"]["train_rows"] == 28_000
    assert result["auc_gap"] <= 0.02, result
    assert result["model_ece"] <= 0.03, result


@pytest.mark.parametrize(("rows", "batch", "batches", "hidden"), [
    (2_800, 64, 44, 8), (28_000, 256, 110, 8), (140_000, 1024, 137, 16), (700_000, 1024, 500, 32)])
def test_the_training_budget_is_drawn_from_the_rows(rows, batch, batches, hidden):
    sized, budget = TrainConfig().sized_to(rows)
    assert (sized.batch_size, sized.batches_per_epoch, sized.hidden_size, sized.max_epochs) == (batch, batches,
                                                                                                 hidden, 40)
    assert sized.learning_rate == 5e-3 and budget["from_flags"] == [] and budget["train_rows"] == rows
    # A flag wins over the rule; a warm start learns at a fifth of the rate.
    flagged, budget = TrainConfig(hidden_size=24, init_weights="served.pt").sized_to(rows)
    assert flagged.hidden_size == 24 and flagged.batch_size == batch and flagged.learning_rate == 1e-3
    assert budget["from_flags"] == ["hidden_size"]


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


def test_evaluate_reports_an_undefined_precision_as_null_with_a_reason(tmp_path):
    """Nothing reaches the threshold: precision is undefined, not 0.0; by default the model's own threshold is
    used, and the picture names AUC, ECE, n and the threshold."""
    shipped = str(ROOT / "models" / "lstm_omni.onnx")
    result = _cli("evaluate", "--model", shipped, "--data", str(EXAMPLE_DATA), "--all", "--threshold", "0.9999")
    report = json.loads(result.stdout)
    given = report["at"]["given"]
    assert given["precision"] is None and given["f1"] is None and given["trade_share"] == 0.0
    assert "no opportunity reached the threshold 0.9999" in given["undefined"]["precision"]
    own = json.loads(_cli("evaluate", "--model", shipped, "--data", str(EXAMPLE_DATA), "--all").stdout)
    assert (own["threshold"], own["threshold_source"]) == (0.78, "model card")
