"""HTTP API: one module per concern decodes requests, calls the predictor and encodes answers; routes.py declares
every route once, direct.py is the front that serves them, errors.py renders every error."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from omni_mev.predictor import Predictor

PREDICTOR = "omni_mev.predictor"


def predictor_of(app: Flask) -> Predictor:
    """The app's predictor (one per worker)."""
    return app.extensions[PREDICTOR]

