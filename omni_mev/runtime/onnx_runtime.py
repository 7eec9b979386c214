"""ONNX Runtime: the primary runtime, one single-threaded session per worker, on AI_ORT_PROVIDERS."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omni_mev.devices import CPU_PROVIDER, DeviceUnavailable, resolve_providers
from omni_mev.features import N_FEATURES
from omni_mev.runtime.base import ModelLoadError, ModelRuntime


class OnnxModel(ModelRuntime):
    """The exported LSTM in an ONNX Runtime session."""

    kind = "onnx"

    def __init__(self, path: Path, role: str = "primary",
                 providers: Sequence[str] = (CPU_PROVIDER,)) -> None:
        super().__init__(path, role)
        self.providers = tuple(providers)
        self._device = self.providers[0]
        self._session: Any = None  # an onnxruntime.InferenceSession once loaded
        self._feeds_name = ""
        self._output_names: list[str] = []

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def device(self) -> str:
        """The provider that runs the graph (ONNX Runtime may hand nodes it cannot run to the CPU)."""
        return self._device

    def _load(self, data: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Workers are separate processes, one per core: a thread pool per session
        # would only fight the other workers for the same cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            providers = resolve_providers(self.providers, setting="AI_ORT_PROVIDERS")
        except DeviceUnavailable as error:
            raise ModelLoadError(str(error), "its execution provider is not available") from None
        session = ort.InferenceSession(data, options, providers=providers)
        inputs = session.get_inputs()
        shape = inputs[0].shape if inputs else []
        if len(inputs) != 1 or len(shape) != 3 or shape[2] != N_FEATURES:
            raise ModelLoadError(f"{self.path} does not take one [batch, seq, {N_FEATURES}] input",
                                 f"its model does not take one [batch, seq, {N_FEATURES}] input")
        self._feeds_name = inputs[0].name
        self._output_names = [session.get_outputs()[0].name]
        # The first run allocates; do it now rather than on a client's request.
        session.run(self._output_names, {self._feeds_name: np.ones((1, 1, N_FEATURES), np.float32)})
        self._device = session.get_providers()[0]
        self._session = session

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self._session.run(self._output_names, {self._feeds_name: features})[0].reshape(-1)
