"""The worker's model: built once per process (gunicorn's post_fork) and scored with metrics."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flask import Flask, current_app

from omni_mev import metrics
from omni_mev.cache import NullCache, cache_of
from omni_mev.config import Settings
from omni_mev.features import FEATURE_NAMES
from omni_mev.runtime.base import ModelLoadError, ModelRuntime, version_of
from omni_mev.runtime.chain import FallbackChain
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.runtime.torch_runtime import TorchModel

log = logging.getLogger(__name__)
EXTENSION = "omni_mev.scorer"

LAST_GOOD_NAME = "last-good.onnx"
SHADOW_SAMPLES = 16


def _runtime_files(settings: Settings) -> list[tuple[type[ModelRuntime], Path, str]]:
    """(runtime class, file, role) in order of preference."""
    files: list[tuple[type[ModelRuntime], Path, str]] = [
        (OnnxModel, settings.model_path, "onnx"),
        (TorchModel, settings.fallback_weights_path, "pytorch"),
    ]
    if settings.last_good_dir is not None:
        files.append((OnnxModel, settings.last_good_dir / LAST_GOOD_NAME, "last-known-good"))
    return files


def build_chain(settings: Settings) -> FallbackChain:
    """ONNX first, the PyTorch weights second, then the last ONNX model that loaded.

    The third keeps the previous model serving when a reload brings files that
    fail to load. Fallbacks are counted in metrics.
    """
    runtimes = [runtime(path, role=role) for runtime, path, role in _runtime_files(settings)]
    return FallbackChain(runtimes, on_fallback=metrics.record_fallback)


def _remember_good(chain: FallbackChain, settings: Settings) -> None:
    """Keep a copy of the primary ONNX model once it has loaded (atomic replace)."""
    primary = chain.runtimes[0]
    if settings.last_good_dir is None or chain.active is not primary:
        return
    target = settings.last_good_dir / LAST_GOOD_NAME
    try:
        data = primary.path.read_bytes()
        if version_of(data) != primary.version:
            return  # replaced since it loaded: the next worker will copy the new one
        if target.exists() and version_of(target.read_bytes()) == primary.version:
            return
        settings.last_good_dir.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.{os.getpid()}")
        scratch.write_bytes(data)
        os.replace(scratch, target)
    except OSError as error:
        log.warning("cannot keep a last-known-good copy in %s: %s", settings.last_good_dir, error)


@dataclass
class WorkerModels:
    """What one worker serves: the fallback chain, and the optional shadow model."""

    chain: FallbackChain
    shadow: OnnxModel | None
    files: tuple[Path | None, ...]


# Built by gunicorn's post_fork in this worker, picked up by create_app.
_worker_models: WorkerModels | None = None


def _files(settings: Settings) -> tuple[Path | None, ...]:
    return (*(path for _, path, _ in _runtime_files(settings)), settings.shadow_model_path)


def _load_shadow(settings: Settings) -> OnnxModel | None:
    if settings.shadow_model_path is None:
        return None
    shadow = OnnxModel(settings.shadow_model_path, role="shadow")
    try:
        shadow.load()
    except ModelLoadError as error:
        log.error("shadow model not loaded, comparisons are off: %s", error.message)
        return None
    log.info("shadow model %s from %s", shadow.version, shadow.path)
    return shadow


def load_for_worker(settings: Settings) -> WorkerModels:
    """Build and load this worker's models; called in gunicorn's post_fork."""
    global _worker_models
    chain = build_chain(settings)
    chain.load()
    _remember_good(chain, settings)
    active = chain.active
    metrics.set_serving_model(active.kind if active else None, active.version if active else None)
    _worker_models = WorkerModels(chain, _load_shadow(settings), _files(settings))
    return _worker_models


def _models_for(settings: Settings) -> WorkerModels:
    """The worker's models when they come from these files, else new ones loaded now."""
    if _worker_models is not None and _worker_models.files == _files(settings):
        return _worker_models
    return load_for_worker(settings)


def training_range(model_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-feature (min, max) of the training data from the model card, if present."""
    card = model_path.with_suffix(".json")
    try:
        observed = json.loads(card.read_text())["training_range"]
        lo = np.array([observed[n][0] for n in FEATURE_NAMES], dtype=np.float32)
        hi = np.array([observed[n][1] for n in FEATURE_NAMES], dtype=np.float32)
    except (OSError, KeyError, ValueError, TypeError) as error:
        log.warning("no training range from %s (%s): drift counters stay at 0", card, error)
        return None
    return lo, hi


@dataclass(frozen=True)
class Scored:
    """Confidences of one model run and what produced them."""

    confidences: np.ndarray
    model_type: str
    model_version: str
    inference_ms: float
    cached: bool = False
    shadow_confidences: np.ndarray | None = None


class Scorer:
    """Runs the chain on validated arrays and records the model metrics."""

    def __init__(self, chain: FallbackChain, settings: Settings, bounds: tuple[np.ndarray, np.ndarray] | None,
                 cache: NullCache | None = None, shadow: OnnxModel | None = None):
        self.chain = chain
        self.settings = settings
        self.bounds = bounds
        self.cache = cache or NullCache()
        self.shadow = shadow
        if bounds is not None:
            self._low, self._high = bounds[0].tolist(), bounds[1].tolist()

    @property
    def serving(self) -> ModelRuntime | None:
        """The runtime answering requests in this worker."""
        return self.chain.active

    def score(self, features: np.ndarray) -> Scored:
        """Confidences for features [batch, seq, 8] float32."""
        if self.bounds is not None:
            self._count_drift(features[:, -1, :])
        started = time.perf_counter()
        confidences, runtime = self.chain.predict(features)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        metrics.INFERENCE_LATENCY_MS.observe(elapsed_ms)
        shadow = self._shadow(features, confidences) if self.shadow is not None else None
        return self._recorded(Scored(confidences, runtime.kind, runtime.version or "unknown", elapsed_ms,
                                     shadow_confidences=shadow))

    def _shadow(self, features: np.ndarray, served: np.ndarray) -> np.ndarray | None:
        """Score with the shadow model and compare; its failures never reach the client."""
        try:
            shadow = self.shadow.predict(features)
        except Exception:  # noqa: BLE001 - the shadow must not affect the response
            log.exception("shadow model failed")
            metrics.SHADOW_ERRORS.inc()
            return None
        threshold = self.settings.threshold
        agree = int(((shadow >= threshold) == (served >= threshold)).sum())
        if agree:
            metrics.SHADOW_AGREEMENT.labels(agree="true").inc(agree)
        if agree < len(served):
            metrics.SHADOW_AGREEMENT.labels(agree="false").inc(len(served) - agree)
        # Every item of small requests; an even sample of large batches (each
        # observation writes to the shared metrics files).
        step = max(1, len(served) // SHADOW_SAMPLES)
        for difference in (shadow[::step] - served[::step])[:SHADOW_SAMPLES]:
            metrics.SHADOW_DIFFERENCE.observe(float(difference))
        return shadow

    def score_one(self, features: np.ndarray) -> Scored:
        """Like score() for a single window [1, seq, 8], through the Redis cache when enabled."""
        serving = self.chain.active
        if self.cache.caching and serving is not None:
            hit = self.cache.get_prediction(serving.version, features)
            if hit is not None:
                if self.bounds is not None:
                    self._count_drift(features[:, -1, :])
                return self._recorded(Scored(np.array([hit], np.float32), serving.kind, serving.version, 0.0, True))
            scored = self.score(features)
            if scored.model_version == serving.version:
                self.cache.put_prediction(scored.model_version, features, float(scored.confidences[0]))
            return scored
        return self.score(features)

    def _recorded(self, scored: Scored) -> Scored:
        last = float(scored.confidences[-1])
        metrics.PREDICTION_CONFIDENCE.set(last)
        self.cache.record_last(last)
        return scored

    def _count_drift(self, current: np.ndarray) -> None:
        lo, hi = self.bounds
        if len(current) == 1:  # one vector: plain comparisons beat numpy's call overhead
            row = current[0].tolist()
            if all(a <= v <= b for a, v, b in zip(self._low, row, self._high)):
                return
        outside = (current < lo) | (current > hi)
        if outside.any():  # rare: count per feature only then
            counts = outside.sum(axis=0)
            metrics.count_out_of_range({FEATURE_NAMES[i]: int(counts[i]) for i in np.flatnonzero(counts)})


def init_app(app: Flask) -> None:
    """Attach this worker's model (loading it when post_fork did not)."""
    settings: Settings = app.config["SETTINGS"]
    models = _models_for(settings)
    app.extensions[EXTENSION] = Scorer(models.chain, settings, training_range(settings.model_path), cache_of(app),
                                       models.shadow)


def scorer() -> Scorer:
    """The current app's scorer."""
    return current_app.extensions[EXTENSION]
