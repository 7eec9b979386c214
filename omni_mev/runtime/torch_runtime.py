"""PyTorch fallback: imported only when a worker actually needs it (~170 MB of RSS)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from omni_mev.runtime.base import ModelLoadError, ModelRuntime


class TorchModel(ModelRuntime):
    """The LSTM's state dict in PyTorch, single-threaded, on AI_TORCH_DEVICE."""

    kind = "pytorch"

    def __init__(self, path: Path, role: str = "primary", device: str = "cpu") -> None:
        super().__init__(path, role)
        self.requested_device = device
        self._device = "cpu" if device == "auto" else device
        self._model: Any = None  # the loaded network; torch is imported only when this fallback loads
        self._torch: Any = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def device(self) -> str:
        return self._device

    def _load(self, data: bytes) -> None:
        import torch

        from omni_mev.devices import DeviceUnavailable, resolve_torch_device
        from omni_mev.model.lstm import load_state

        try:
            self._device = resolve_torch_device(self.requested_device)
        except DeviceUnavailable as error:
            raise ModelLoadError(str(error), "its device is not available") from None
        # One process per core already; intra-op threads would oversubscribe.
        torch.set_num_threads(1)
        model = load_state(io.BytesIO(data)).to(self._device)
        with torch.inference_mode():
            model(torch.ones((1, 1, 8), device=self._device))
        self._torch = torch
        self._model = model

    def predict(self, features: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            raw = self._torch.from_numpy(features).to(self._device)
            return self._model(raw).cpu().numpy().reshape(-1)
