"""Where the models run: AI_ORT_PROVIDERS, AI_TORCH_DEVICE and train --device, checked on this machine's CPU.

The CUDA paths run where torch sees a GPU; here they must fail cleanly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from omni_mev.config import ConfigError, load_settings
from omni_mev.devices import (CPU_PROVIDER, DeviceUnavailable, cuda_devices, parse_providers, parse_torch_device,
                              resolve_providers, resolve_torch_device)
from omni_mev.features import EXAMPLE_FEATURES
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.runtime.torch_runtime import TorchModel
from tests.conftest import MODELS, ROOT

EXAMPLE = np.array(EXAMPLE_FEATURES, dtype=np.float32).reshape(1, 1, -1)
HAS_CUDA = bool(cuda_devices())


@pytest.mark.parametrize(("raw", "expected"), [
    ("cpu", (CPU_PROVIDER,)),
    ("cuda, cpu", ("CUDAExecutionProvider", CPU_PROVIDER)),
    ("TensorRT,CUDA,cpu,cuda", ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_PROVIDER)),
    ("OpenVINOExecutionProvider", ("OpenVINOExecutionProvider",)),
])
def test_providers_keep_their_order(raw, expected):
    assert parse_providers("AI_ORT_PROVIDERS", raw) == expected
    assert load_settings(environ={"AI_ORT_PROVIDERS": raw}).ort_providers == expected


@pytest.mark.parametrize("raw", ["", " , ", "gpu", "cuda;rm", "CPU Execution"])
def test_bad_provider_lists_refused_naming_the_setting(raw):
    with pytest.raises(ConfigError, match=r"^AI_ORT_PROVIDERS="):
        load_settings(environ={"AI_ORT_PROVIDERS": raw})


@pytest.mark.parametrize(("raw", "ok"), [("cpu", True), ("CUDA", True), ("cuda:1", True), ("auto", True),
                                         ("gpu", False), ("cuda:", False), ("cuda:x", False), ("", False)])
def test_torch_device_values(raw, ok):
    if ok:
        assert load_settings(environ={"AI_TORCH_DEVICE": raw}).torch_device == raw.lower()
    else:
        with pytest.raises(ConfigError, match=r"^AI_TORCH_DEVICE=.*allowed: cpu, cuda, cuda:N, auto"):
            parse_torch_device("AI_TORCH_DEVICE", raw)


def test_defaults_are_the_cpu():
    settings = load_settings(environ={})
    assert settings.ort_providers == (CPU_PROVIDER,) and settings.torch_device == "cpu"


def test_missing_provider_is_one_line_naming_setting_and_what_is_there():
    with pytest.raises(DeviceUnavailable) as raised:
        resolve_providers(("CUDAExecutionProvider", CPU_PROVIDER), available=["CPUExecutionProvider"])
    message = str(raised.value)
    assert message.startswith("AI_ORT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider is not available here; "
                              "available: CPUExecutionProvider")
    assert "onnxruntime-gpu" in message and "\n" not in message
    assert resolve_providers((CPU_PROVIDER,), available=["AzureExecutionProvider", CPU_PROVIDER]) == [CPU_PROVIDER]


def test_torch_device_resolution_with_and_without_a_gpu():
    assert resolve_torch_device("auto", gpus=[]) == "cpu"  # auto never fails
    assert resolve_torch_device("auto", gpus=["NVIDIA H100"]) == "cuda:0"
    assert resolve_torch_device("cuda", gpus=["NVIDIA H100"]) == "cuda:0"
    assert resolve_torch_device("cpu", gpus=["NVIDIA H100"]) == "cpu"
    with pytest.raises(DeviceUnavailable, match=r"^AI_TORCH_DEVICE=cuda is not available here; available: cpu \("):
        resolve_torch_device("cuda", gpus=[])
    with pytest.raises(DeviceUnavailable, match=r"available: cpu, cuda:0 \(NVIDIA H100\)$"):
        resolve_torch_device("cuda:1", gpus=["NVIDIA H100"])


def test_runtimes_report_where_they_run():
    onnx = OnnxModel(MODELS / "lstm_omni.onnx")
    onnx.load()
    assert onnx.device == CPU_PROVIDER
    torch_model = TorchModel(MODELS / "lstm_omni.pt", device="auto")
    torch_model.load()
    assert torch_model.device == ("cuda:0" if HAS_CUDA else "cpu")
    assert float(torch_model.predict(EXAMPLE)[0]) == pytest.approx(float(onnx.predict(EXAMPLE)[0]), abs=1e-5)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU: the request would succeed")
def test_a_runtime_asked_for_a_missing_gpu_fails_to_load_cleanly():
    from omni_mev.runtime.base import ModelLoadError

    for runtime in (OnnxModel(MODELS / "lstm_omni.onnx", providers=("CUDAExecutionProvider",)),
                    TorchModel(MODELS / "lstm_omni.pt", device="cuda")):
        with pytest.raises(ModelLoadError, match="is not available here") as raised:
            runtime.load()
        assert "not available" in raised.value.public and str(MODELS) not in raised.value.public


def test_status_and_metrics_name_the_provider(client):
    body = client.get("/status").get_json()
    assert body["model_type"] == "onnx" and body["model_device"] == CPU_PROVIDER
    from omni_mev import metrics

    info = [s for m in metrics.MODEL_INFO.collect() for s in m.samples if s.value == 1]
    assert info and info[-1].labels["device"] == CPU_PROVIDER


def _gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OMNI_MEV_ENV_FILE": "/nonexistent", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU: the service would start")
@pytest.mark.parametrize(("env", "expected"), [
    ({"AI_ORT_PROVIDERS": "cuda,cpu"}, "AI_ORT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider is not available"),
    ({"AI_TORCH_DEVICE": "cuda"}, "AI_TORCH_DEVICE=cuda is not available here; available: cpu"),
])
def test_the_service_refuses_to_start_on_a_missing_gpu_with_one_line(env, expected):
    result = _gunicorn(env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("omni-mev: configuration error: " + expected), lines


def test_train_refuses_a_missing_gpu_or_takes_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "omni_mev.cli", "train", "--device", "cuda", "--opportunities",
                             "3000", "--max-epochs", "1", "--batches-per-epoch", "2", "--output", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    if HAS_CUDA:
        assert result.returncode == 0 and json.loads((tmp_path / "lstm_omni.json").read_text())[
            "training"]["device"].startswith("cuda:0")
    else:
        assert result.returncode == 2 and not (tmp_path / "lstm_omni.onnx").exists()
        assert result.stderr.strip() == ("omni-mev train: --device=cuda is not available here; available: cpu "
                                         "(torch sees no CUDA GPU (a CPU build of torch, or no driver))")


# Import hygiene: the runtimes, the model and the trainer in a plain scientific Python.

WEB_AND_SERVICE = ("flask", "werkzeug", "gunicorn", "redis", "marshmallow", "prometheus_client",
                   "prometheus_flask_exporter", "sqlalchemy", "apispec", "orjson", "dotenv", "requests", "urllib3",
                   "sklearn", "onnx", "onnxscript", "matplotlib", "pyarrow")


def _without(packages: tuple[str, ...], directory) -> dict[str, str]:
    """An environment where importing any of `packages` fails, as if they were not installed."""
    for name in packages:
        (directory / name).mkdir()
        (directory / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
    return {**os.environ, "PYTHONPATH": f"{directory}{os.pathsep}{ROOT}"}


def test_gpu_benchmark_runs_with_only_numpy_torch_and_onnxruntime(tmp_path):
    """bench.devices (the script the GPU machine runs) needs nothing of the web service, nor scikit-learn."""
    stubs = tmp_path / "missing"
    stubs.mkdir()
    result = subprocess.run([sys.executable, "-m", "bench.devices", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                            env=_without(WEB_AND_SERVICE, stubs), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("devices-*-quick.json")
    run = json.loads(path.read_text())
    rows = {(r["runtime"], r["device"], r["cpu_threads"], r["batch_size"]) for r in run["inference"]}
    assert ("onnxruntime", CPU_PROVIDER, 1, 1024) in rows and ("pytorch", "cpu", 1, 64) in rows
    assert all(r["predictions_per_s"] > 0 for r in run["inference"])
    assert ("pytorch", "cuda:0", run["machine"]["cores"], 1) in rows if HAS_CUDA else run["devices"] == ["cpu"]
    cpu = run["training"]["runs"]["cpu"]
    assert cpu["seconds_per_epoch"] > 0 and 0.5 < cpu["test_auc_with_history"] <= 1.0
    if HAS_CUDA:
        assert run["training"]["agree_within_goal"], run["training"]
