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
TESTS = ROOT / "tests"
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


# Test tiers: each test is marked with the heaviest thing it (or a fixture it uses) starts, read from their source;
# a test may carry its own tier mark instead. `make test-fast` runs the unit tier (no system package needed).
TIERS = ("unit", "service", "system", "model", "bench")
_STARTS = (
    ("bench", ("bench.run", "bench.money_path", "bench.ledger_load", "bench.streams", "smoke_results")),
    ("system", ("PostgresServer(", '"postgres"', "Nginx(", "Prometheus(", "HostNetwork", "fleet", "systemd-analyze",
                "promtool", "_promtool(", "rustc", "node")),
    ("model", ("train(", '"train"', "run_loop(", "regime_shift", "truth_generators", "logistic_truth", "tiny_run",
               "fit_network", "export_onnx", "bench.devices")),
    ("service", ("Gunicorn(", "RedisServer(", "StreamServer(", "EngineStub(", "service", "subprocess.run(",
                 "_cli(", "_check(", "Popen(")),
)


def _sources(item: pytest.Item) -> str:
    """The test's source and that of every fixture it uses, through the fixtures they use."""
    import inspect

    seen, texts = set(), []
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in (info.name2fixturedefs.values() if info is not None else ()):
        functions += [definition.func for definition in definitions]
    for function in functions:
        if function is None or function in seen:
            continue
        seen.add(function)
        try:
            if Path(inspect.getsourcefile(function) or "").is_relative_to(TESTS):  # not pytest's own fixtures
                texts.append(inspect.getsource(function))
        except (OSError, TypeError):
            continue
    return "\n".join(texts)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        source = _sources(item)
        tier = next((name for name, needles in _STARTS if any(needle in source for needle in needles)), "unit")
        item.add_marker(getattr(pytest.mark, tier))
