"""Shared fixtures: an app built by the factory and its test client."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from omni_mev import create_app
from omni_mev.config import Settings

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
_SETTING_VARIABLES = [f.metadata["env"] for f in fields(Settings)]
# The threshold of the trading tests: `vectors` holds opportunities scored clearly on either side of it.
THRESHOLD = 0.5


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests see only the settings they set: no .env, no stray variables, a private decision log and ledger."""
    monkeypatch.setenv("OMNI_MEV_ENV_FILE", "/nonexistent/.env")
    for name in _SETTING_VARIABLES + ["PROMETHEUS_MULTIPROC_DIR"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AI_DECISION_LOG", str(tmp_path / "decisions.jsonl"))
    monkeypatch.setenv("AI_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")


@pytest.fixture
def make_app() -> Callable[..., Flask]:
    """Build an app with settings overridden by name, e.g. make_app(AI_THRESHOLD=0.5)."""

    def make(**overrides: Any) -> Flask:
        app = create_app(overrides)
        app.config["TESTING"] = True
        return app

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask):
    return app.test_client()


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped model files; returns the .onnx path."""
    for suffix in (".onnx", ".pt", ".json"):
        shutil.copy(MODELS / f"lstm_omni{suffix}", tmp_path / f"lstm_omni{suffix}")
    return tmp_path / "lstm_omni.onnx"


@pytest.fixture(scope="session")
def vectors() -> dict[bool, list[list[float]]]:
    """Realistic vectors the shipped model scores clearly above (True) / below (False) THRESHOLD."""
    from omni_mev.runtime.onnx_runtime import OnnxModel
    from omni_mev.training.simulate import simulate

    features = simulate(3000, seed=5).features
    model = OnnxModel(MODELS / "lstm_omni.onnx")
    model.load()
    confidence = model.predict(features[:, None, :])
    return {True: features[confidence > THRESHOLD + 0.1][:30].tolist(),
            False: features[confidence < THRESHOLD - 0.1][:30].tolist()}
