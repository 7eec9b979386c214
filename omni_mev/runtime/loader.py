"""The worker's models, built once per process from the settings: the fallback chain and the shadow.

Called by the application factory, which gunicorn runs in each worker
(`preload_app` is off): ONNX Runtime thread pools and torch/OpenMP do not
survive fork, so nothing here may run in the master.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omni_mev import metrics
from omni_mev.config import Settings
from omni_mev.features import FEATURE_NAMES
from omni_mev.runtime.base import ModelLoadError, ModelRuntime, version_of
from omni_mev.runtime.chain import FallbackChain
from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.runtime.torch_runtime import TorchModel

log = logging.getLogger(__name__)
LAST_GOOD_NAME = "last-good.onnx"

FeatureRange = tuple[np.ndarray, np.ndarray]


@dataclass
class WorkerModels:
    """What one worker serves: the fallback chain, the optional shadow model, the served model's card."""

    chain: FallbackChain
    shadow: OnnxModel | None
    training_range: FeatureRange | None
    card: dict[str, Any] = field(default_factory=dict)


def _runtimes(settings: Settings) -> list[ModelRuntime]:
    """ONNX first, the PyTorch weights second, then the last ONNX model that loaded.

    The third keeps the previous model serving when a reload brings files that
    fail to load.
    """
    runtimes: list[ModelRuntime] = [
        OnnxModel(settings.model_path, role="onnx", providers=settings.ort_providers),
        TorchModel(settings.fallback_weights_path, role="pytorch", device=settings.torch_device),
    ]
    if settings.last_good_dir is not None:
        runtimes.append(OnnxModel(settings.last_good_dir / LAST_GOOD_NAME, role="last-known-good",
                                  providers=settings.ort_providers))
    return runtimes


def build_chain(settings: Settings) -> FallbackChain:
    """The chain of runtimes; fallbacks are counted in metrics."""
    return FallbackChain(_runtimes(settings), on_fallback=metrics.record_fallback)


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


def _load_shadow(settings: Settings) -> OnnxModel | None:
    if settings.shadow_model_path is None:
        return None
    shadow = OnnxModel(settings.shadow_model_path, role="shadow", providers=settings.ort_providers)
    try:
        shadow.load()
    except ModelLoadError as error:
        log.error("shadow model not loaded, comparisons are off: %s", error.message)
        return None
    log.info("shadow model %s from %s", shadow.version, shadow.path)
    return shadow


def read_card(model_path: Path) -> dict[str, Any]:
    """The model card beside the ONNX file ({} when there is none): the served model's own figures."""
    card = model_path.with_suffix(".json")
    try:
        return json.loads(card.read_text())
    except (OSError, ValueError) as error:
        log.warning("no model card at %s (%s): drift counters and the support check are off", card, error)
        return {}


def training_range(card: dict[str, Any]) -> FeatureRange | None:
    """The per-feature (min, max) of the training data from the model card, if present."""
    try:
        observed = card["training_range"]
        lo = np.array([observed[n][0] for n in FEATURE_NAMES], dtype=np.float32)
        hi = np.array([observed[n][1] for n in FEATURE_NAMES], dtype=np.float32)
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    return lo, hi


def load_worker_models(settings: Settings) -> WorkerModels:
    """Build and load this worker's models."""
    chain = build_chain(settings)
    chain.load()
    _remember_good(chain, settings)
    active = chain.active
    metrics.set_serving_model(*((active.kind, active.version, active.device) if active else (None, None)))
    card = read_card(settings.model_path)
    return WorkerModels(chain, _load_shadow(settings), training_range(card), card)
