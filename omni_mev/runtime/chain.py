"""Fallback chain: the first runtime that loads serves; a failing one hands over to the next."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from omni_mev.errors import ModelUnavailable
from omni_mev.runtime.base import ModelLoadError, ModelRuntime

log = logging.getLogger(__name__)

FallbackListener = Callable[[str, str, str], None]  # (reason, from_kind, to_kind)


class FallbackChain:
    """Runtimes in order of preference; later ones load only when needed (lazily)."""

    def __init__(self, runtimes: Sequence[ModelRuntime], on_fallback: FallbackListener | None = None) -> None:
        if not runtimes:
            raise ValueError("a chain needs at least one runtime")
        self.runtimes = list(runtimes)
        self.on_fallback = on_fallback
        self.errors: dict[str, str] = {}  # role -> why it could not serve (for the log: paths included)
        self.public_errors: dict[str, str] = {}  # role -> the same, for clients
        self._active: int | None = None

    @property
    def active(self) -> ModelRuntime | None:
        """The runtime answering requests, or None when nothing could be loaded."""
        return None if self._active is None else self.runtimes[self._active]

    @property
    def ready(self) -> bool:
        """Whether some runtime serves."""
        return self._active is not None

    @property
    def unavailable_reason(self) -> str:
        """Why nothing serves, one sentence, for the log."""
        return _reason(self.errors)

    @property
    def public_reason(self) -> str:
        """Why nothing serves, one sentence without server paths, for clients."""
        return _reason(self.public_errors)

    def load(self) -> ModelRuntime | None:
        """Load the first runtime that can be loaded, starting at the top."""
        self._active = self._first_loadable(0)
        runtime = self.active
        if runtime is None:
            log.error("no model can serve: %s", self.unavailable_reason)
            return None
        if self._active:  # not the first: the ones before it failed
            self._notify("load", self.runtimes[0], runtime)
        log.info("model serving: %s %s from %s", runtime.kind, runtime.version, runtime.path)
        return runtime

    def _first_loadable(self, start: int) -> int | None:
        for index in range(start, len(self.runtimes)):
            runtime = self.runtimes[index]
            if runtime.ready:
                return index
            try:
                runtime.load()
            except ModelLoadError as error:
                self.errors[runtime.role] = error.message
                self.public_errors[runtime.role] = error.public
                log.error("model %s (%s) failed to load: %s", runtime.role, runtime.kind, error.message)
                continue
            return index
        return None

    def _notify(self, reason: str, failed: ModelRuntime, serving: ModelRuntime) -> None:
        log.warning("model fallback (%s): %s %s -> %s %s", reason, failed.role, failed.kind, serving.role, serving.kind)
        if self.on_fallback is not None:
            self.on_fallback(reason, failed.kind, serving.kind)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, ModelRuntime]:
        """Confidences and the runtime that produced them.

        A runtime that raises on a request, or answers with a confidence that
        is not a finite number, hands that request to the next one in the
        chain (loading it if needed); the next request tries the serving
        runtime again, so one bad request does not demote the whole worker.
        """
        index = self._active
        while index is not None:
            runtime = self.runtimes[index]
            try:
                confidences = runtime.predict(features)
            except Exception as error:
                self.errors[runtime.role] = f"failed on a request: {error}"
                log.exception("model %s (%s) failed on a request", runtime.role, runtime.kind)
            else:
                if _finite(confidences):
                    return confidences, runtime
                self.errors[runtime.role] = "answered a request with a confidence that is not a finite number"
                log.error("model %s (%s) answered a non-finite confidence for an input of shape %s",
                          runtime.role, runtime.kind, features.shape)
            self.public_errors[runtime.role] = "failed on a request"
            index = self._first_loadable(index + 1)
            if index is not None:
                self._notify("runtime", runtime, self.runtimes[index])
        raise ModelUnavailable(self.public_reason)


def _finite(confidences: np.ndarray) -> bool:
    # One value: a plain float test; a numpy reduction costs several microseconds there.
    if len(confidences) == 1:
        return math.isfinite(confidences[0])
    return bool(np.isfinite(confidences).all())


def _reason(errors: dict[str, str]) -> str:
    details = "; ".join(f"{role}: {why}" for role, why in errors.items())
    return f"No model can serve ({details})." if details else "No model loaded yet."
