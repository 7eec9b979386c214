"""Where the models run: ONNX Runtime execution providers and the PyTorch device, checked against what is installed.

A 32-unit LSTM scores one opportunity in ~35 µs on a CPU core: a GPU cannot
speed up a single request, only large batches and training (figures in
docs/benchmarks.md). So CPU is the default everywhere, `auto` takes a GPU
when there is one and never fails, and asking for a device that is not there
stops start-up with one line naming the setting and what is available.

Nothing here imports torch or onnxruntime at module level: the gunicorn master
asks a child process (`python -m omni_mev.devices`), because CUDA must not be
initialised in a process that forks workers, and torch costs ~170 MB.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from omni_mev.errors import ConfigError

CPU_PROVIDER = "CPUExecutionProvider"
# Short names users write; any other ONNX Runtime provider is given by its full name.
PROVIDER_SHORT_NAMES = {"cpu": CPU_PROVIDER, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_PROVIDER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*ExecutionProvider$")
_TORCH_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
GPU_EXTRA_HINT = "CUDA and TensorRT providers need onnxruntime-gpu: pip install 'omni-mev[gpu]'"


class DeviceUnavailable(ConfigError):
    """A requested provider or device is not on this machine; the message is the one line start-up prints."""

    def __init__(self, setting: str, requested: str, available: Sequence[str], hint: str = "") -> None:
        message = f"{setting}={requested} is not available here; available: {', '.join(available) or 'none'}"
        super().__init__(message + (f" ({hint})" if hint else ""))


def parse_providers(name: str, raw: str) -> tuple[str, ...]:
    """AI_ORT_PROVIDERS: an ordered, comma-separated list of provider names (cpu, cuda, tensorrt or full names)."""
    providers = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        provider = PROVIDER_SHORT_NAMES.get(item.lower(), item)
        if not _PROVIDER_NAME.match(provider):
            raise ConfigError(f"{name}={raw!r} names {item!r}, not an ONNX Runtime execution provider; allowed: "
                              f"cpu, cuda, tensorrt or full names such as CUDAExecutionProvider, in order of preference")
        if provider not in providers:
            providers.append(provider)
    if not providers:
        raise ConfigError(f"{name}={raw!r} is empty; allowed: cpu, cuda, tensorrt or full provider names")
    return tuple(providers)


def parse_torch_device(name: str, raw: str) -> str:
    """AI_TORCH_DEVICE / train --device: cpu, cuda, cuda:N or auto."""
    value = raw.strip().lower()
    if not _TORCH_DEVICE.match(value):
        raise ConfigError(f"{name}={raw!r} is not a device; allowed: cpu, cuda, cuda:N, auto")
    return value


def resolve_providers(requested: Sequence[str], available: Sequence[str] | None = None,
                      setting: str = "AI_ORT_PROVIDERS") -> list[str]:
    """The providers to open a session with, in order; every one must be installed."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    missing = [p for p in requested if p not in available]
    if missing:
        hint = GPU_EXTRA_HINT if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(missing) else ""
        raise DeviceUnavailable(setting, ",".join(requested), available, hint)
    return list(requested)


def cuda_devices() -> list[str]:
    """The CUDA devices torch sees, by name ([] without CUDA or without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def resolve_torch_device(requested: str, setting: str = "AI_TORCH_DEVICE", gpus: Sequence[str] | None = None) -> str:
    """cpu, or cuda:N when that GPU is there; auto: the first GPU if any, else cpu (never fails)."""
    if requested == "cpu":
        return "cpu"
    gpus = cuda_devices() if gpus is None else gpus
    if requested == "auto":
        return "cuda:0" if gpus else "cpu"
    index = int(requested.partition(":")[2] or 0)
    if index >= len(gpus):
        available = ["cpu", *(f"cuda:{i} ({name})" for i, name in enumerate(gpus))]
        hint = "" if gpus else "torch sees no CUDA GPU (a CPU build of torch, or no driver)"
        raise DeviceUnavailable(setting, requested, available, hint)
    return f"cuda:{index}"


def describe(device: str) -> str:
    """A device with its card's name, for cards, /status and benchmarks."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def probe(timeout_s: float = 120.0) -> dict[str, Any]:
    """What a fresh process finds: ONNX Runtime's providers and torch's GPUs (None where not installed)."""
    result = subprocess.run([sys.executable, "-m", "omni_mev.devices"], capture_output=True, text=True,
                            timeout=timeout_s, env=os.environ.copy())
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"cannot probe this machine's devices: {last_line}")
    return json.loads(result.stdout)


def check_start_up(providers: Sequence[str], torch_device: str) -> None:
    """Stop start-up (DeviceUnavailable) when the service asks for a provider or device this machine lacks.

    The default (CPU, cpu) and `auto` need no check, so a CPU deployment starts
    without importing torch anywhere.
    """
    if tuple(providers) == (CPU_PROVIDER,) and torch_device in ("cpu", "auto"):
        return
    found = probe()
    resolve_providers(providers, found["onnxruntime"])
    if torch_device not in ("cpu", "auto"):
        if found["torch"] is None:
            raise DeviceUnavailable("AI_TORCH_DEVICE", torch_device, ["none"], "torch is not installed")
        resolve_torch_device(torch_device, gpus=found["torch"])


def _probe_here() -> dict[str, Any]:
    found: dict[str, Any] = {"onnxruntime": [], "torch": None}
    try:
        import onnxruntime

        found["onnxruntime"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    try:
        found["torch"] = cuda_devices()
    except ImportError:
        pass
    return found


if __name__ == "__main__":
    sys.stdout.write(json.dumps(_probe_here()) + "\n")
