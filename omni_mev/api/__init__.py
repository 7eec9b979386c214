"""HTTP API: one blueprint per concern; they decode requests, call the predictor and encode answers."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from omni_mev.predictor import Predictor

PREDICTOR = "omni_mev.predictor"


def predictor_of(app: Flask) -> Predictor:
    """The app's predictor (one per worker)."""
    return app.extensions[PREDICTOR]


def register_blueprints(app: Flask) -> None:
    """Mount every blueprint on the app."""
    from omni_mev.api import batch, openapi, outcomes, predict, quality, status, v2

    app.register_blueprint(predict.bp)
    app.register_blueprint(batch.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(outcomes.bp)
    app.register_blueprint(quality.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(openapi.bp)
