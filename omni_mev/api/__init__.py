"""HTTP API: one blueprint per concern."""
from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Mount every blueprint on the app."""
    from omni_mev.api import batch, openapi, predict, status, v2

    app.register_blueprint(predict.bp)
    app.register_blueprint(batch.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(openapi.bp)
