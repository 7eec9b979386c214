"""PyTorch fallback: imported only when a worker actually needs it (~170 MB of RSS)."""
from __future__ import annotations

import io

import numpy as np

from omni_mev.runtime.base import ModelRuntime


class TorchModel(ModelRuntime):
    """The LSTM's state dict in PyTorch, single-threaded."""

    kind = "pytorch"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._model = None
        self._torch = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    def _load(self, data: bytes) -> None:
        import torch

        from omni_mev.model.lstm import load_state

        # One process per core already; intra-op threads would oversubscribe.
        torch.set_num_threads(1)
        model = load_state(io.BytesIO(data))
        with torch.inference_mode():
            model(torch.ones((1, 1, 8)))
        self._torch = torch
        self._model = model

    def predict(self, features: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(features)).numpy().reshape(-1)
