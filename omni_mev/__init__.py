"""omni-mev: scores DEX arbitrage opportunities with a calibrated LSTM, over HTTP.

Importing the package loads nothing heavy: the runtimes, the predictor and the
trainer work without Flask; `create_app` brings the web layer in.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from omni_mev.api.table import Route

from omni_mev.version import __version__

__all__ = ["__version__", "create_app"]
log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None, route_table: tuple[Route, ...] | None = None) -> Flask:
    """Application factory: settings, this worker's models and predictor, extensions, blueprints.

    gunicorn runs it in each worker (no `preload_app`), so the models load in
    the process that serves them. `config` overrides environment variables by
    name (e.g. {"AI_THRESHOLD": 0.5}); `route_table` replaces the route table
    (omni_mev.api.routes.ROUTES), e.g. to add one.
    """
    from omni_mev import auth
    from omni_mev.api import PREDICTOR, errors, quality, routes
    from omni_mev.api.application import Application
    from omni_mev.service import build_service, settings_from

    settings = settings_from(config)
    # No static files: every path is an API route.
    app = Application(__name__, static_folder=None)
    app.config.update(SETTINGS=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes)
    auth.init_app(app)
    service = build_service(settings)
    app.extensions[PREDICTOR] = service.predictor
    quality.init_app(app)
    table = routes.init_app(app, routes.ROUTES if route_table is None else route_table)
    errors.init_app(app, table.error_shape)
    return app
