"""omni_mev.client and the example clients (Python, Node, Rust) against a live gunicorn."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from omni_mev.client import Client, OmniMevError
from tests.servers import ROOT, Gunicorn

KEY = "example-key-0123456789"
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def service():
    with Gunicorn({"AI_API_KEYS": KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def expected(service):
    """What the examples must print, computed with the package's client."""
    from examples.python.predict import BATCH, EXAMPLE  # the examples' own inputs

    with Client(service.url, api_key=KEY) as client:
        one = client.predict(EXAMPLE)
        many = client.predict_batch(BATCH)
    return [
        f"predict: decision={str(one.decision).lower()} confidence={one.confidence} "
        f"model={one.model_type}/{one.model_version}",
        "batch: decisions=[" + ", ".join(str(d).lower() for d in many.decisions) + "]",
    ]


def test_client_typed_results_and_errors(service):
    with Client(service.url, api_key=KEY, timeout=2.0) as client:
        result = client.predict([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0], opportunity_id="c1")
        assert isinstance(result.confidence, float) and result.opportunity_id == "c1"
        assert result.model_type == "onnx" and result.mode == "SIMULATION"
        batch = client.predict_batch([[10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]] * 3)
        assert len(batch.results) == 3 and batch.results[0].confidence == result.confidence
        assert client.health() and client.status()["ai_engine"] == "online"
        with pytest.raises(OmniMevError) as raised:
            client.predict([1, 2, 3])
        assert raised.value.status == 422 and "features" in raised.value.fields
    with Client(service.url, api_key="wrong-key-0000000000") as client, pytest.raises(OmniMevError) as raised:
        client.predict([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0])
    assert raised.value.status == 401


def run_example(argv: list[str], service) -> list[str]:
    env = {**os.environ, "OMNI_MEV_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(argv + [service.url], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_python_example(service, expected):
    assert run_example([sys.executable, str(EXAMPLES / "python" / "predict.py")], service) == expected


def test_node_example(service, expected):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js is not installed (make test installs it with apt)")
    assert run_example([node, str(EXAMPLES / "node" / "predict.mjs")], service) == expected


def test_rust_example(service, expected, tmp_path):
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc is not installed (make test installs it with apt)")
    binary = tmp_path / "predict"
    build = subprocess.run([rustc, "--edition", "2021", "-O", str(EXAMPLES / "rust" / "src" / "main.rs"), "-o",
                            str(binary)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert run_example([str(binary)], service) == expected
