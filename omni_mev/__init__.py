"""omni-mev: scores DEX arbitrage opportunities with a calibrated LSTM, over HTTP."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask

__version__ = "1.0.0"
log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory: settings, extensions, blueprints, JSON errors.

    `config` overrides environment variables by name (e.g. {"AI_THRESHOLD": 0.5}).
    """
    from omni_mev import auth, cache, errors, metrics, serving
    from omni_mev.api import register_blueprints
    from omni_mev.config import load_settings
    from omni_mev.jsonio import OrjsonProvider
    from omni_mev.trading import trader

    settings = load_settings(config)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        STARTED_AT=time.time(),
    )
    errors.init_app(app)
    auth.init_app(app)
    metrics.init_app(app)
    cache.init_app(app)
    serving.init_app(app)
    trader.init_app(app)
    register_blueprints(app)
    return app
