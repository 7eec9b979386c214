"""The model runtime interface: load, predict, ready, kind and version; nothing about HTTP."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from omni_mev.errors import ModelUnavailable

MODEL_NAME = "lstm_omni"
VERSION_LENGTH = 12


class ModelLoadError(ModelUnavailable):
    """A model file is missing, unreadable or not a usable model.

    `message` names the file, for the log; `public` says the same without
    server paths, for clients.
    """

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


def version_of(data: bytes) -> str:
    """A model's version: the start of the sha256 of its file."""
    return hashlib.sha256(data).hexdigest()[:VERSION_LENGTH]


class ModelRuntime(ABC):
    """One way of running the model: load once, then predict on [batch, seq, 8] float32."""

    kind: ClassVar[str]

    def __init__(self, path: Path, role: str = "primary") -> None:
        self.path = path
        self.role = role
        self.version: str | None = None

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether load() succeeded."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where it runs: an ONNX Runtime execution provider, or a torch device."""

    @abstractmethod
    def _load(self, data: bytes) -> None:
        """Build the model from the file's bytes; raise on anything unusable."""

    @abstractmethod
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Confidences [batch] for features [batch, seq, 8] float32."""

    def load(self) -> None:
        """Read the file once, build the model, take the version from the same bytes."""
        try:
            data = self.path.read_bytes()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ModelLoadError(f"cannot read {self.path}: {reason}", f"its file cannot be read ({reason})") from error
        try:
            self._load(data)
        except ModelLoadError:
            raise
        except Exception as error:  # every library raises its own types
            raise ModelLoadError(f"cannot load {self.path} with {self.kind}: {error}",
                                 f"its file is not a usable {self.kind} model") from error
        self.version = version_of(data)
