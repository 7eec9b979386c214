"""omni-mev: scores DEX arbitrage opportunities with a calibrated LSTM, over HTTP.

Importing the package loads nothing heavy: the runtimes, the predictor and the
trainer work without Flask; `create_app` brings the web layer in.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

from omni_mev.version import __version__

__all__ = ["__version__", "create_app"]
log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory: settings, this worker's models and predictor, extensions, blueprints.

    gunicorn runs it in each worker (no `preload_app`), so the models load in
    the process that serves them. `config` overrides environment variables by
    name (e.g. {"AI_THRESHOLD": 0.5}).
    """
    from omni_mev import auth, cache, metrics
    from omni_mev.api import PREDICTOR, direct, errors, quality, register_blueprints
    from omni_mev.api.application import Application
    from omni_mev.config import load_settings
    from omni_mev.ledger.store import build_ledger
    from omni_mev.predictor import Predictor
    from omni_mev.runtime.loader import load_worker_models
    from omni_mev.trading.dispatcher import build_dispatcher

    settings = load_settings(config)
    app = Application(__name__)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        STARTED_AT=time.time(),
    )
    errors.init_app(app)
    api_keys = auth.init_app(app)
    metrics.init_app(app)
    redis = cache.init_app(app)
    app.extensions[PREDICTOR] = Predictor(settings, load_worker_models(settings), redis,
                                          build_dispatcher(settings, redis),
                                          build_ledger(settings.ledger_url, settings.ledger_retention_days,
                                                       settings.ledger_dead_letters))
    quality.init_app(app)
    direct.install(app, api_keys)
    register_blueprints(app)
    return app
