"""The scoring service without a transport: one process's settings, models, cache, dispatcher, ledger and predictor.

The HTTP application factory (omni_mev.create_app) and the stream server
(omni_mev.stream) each build one per process from the same settings, so a
WebSocket or gRPC answer is the answer /predict gives.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omni_mev.cache import Cache, build_cache
from omni_mev.config import Settings, load_settings
from omni_mev.ledger.store import build_ledger
from omni_mev.predictor import Predictor
from omni_mev.registry.serving import with_registry_models
from omni_mev.runtime.loader import load_worker_models
from omni_mev.trading.dispatcher import build_dispatcher


@dataclass(frozen=True)
class Service:
    settings: Settings
    cache: Cache
    predictor: Predictor


def settings_from(config: Mapping[str, Any] | None = None) -> Settings:
    """The settings, the registry's champion and challenger resolved (omni_mev.registry.serving)."""
    return with_registry_models(load_settings(config))


def build_service(settings: Settings) -> Service:
    """This process's predictor: its own model session, cache, dispatcher and ledger writer."""
    cache = build_cache(settings)
    predictor = Predictor(settings, load_worker_models(settings), cache, build_dispatcher(settings, cache),
                          build_ledger(settings.ledger_url, settings.ledger_retention_days, settings.ledger_dead_letters))
    return Service(settings, cache, predictor)


def with_new_models(service: Service, settings: Settings) -> Service:
    """The service serving the models `settings` name now (a promotion): new sessions, the same cache, dispatcher
    and ledger writer, so nothing queued or claimed is lost in the swap."""
    old = service.predictor
    predictor = Predictor(settings, load_worker_models(settings), service.cache, old.dispatcher, old.ledger)
    return Service(settings, service.cache, predictor)
