"""The health body, the same on the HTTP service's /health and the stream server's."""
from __future__ import annotations

from typing import Any

from omni_mev.errors import ModelUnavailable
from omni_mev.predictor import ModelStatus


def health_body(status: ModelStatus) -> dict[str, Any]:
    """{"status": "ok", ...} with a model; ModelUnavailable (503) with the reason otherwise. No I/O."""
    if not status.ready:
        raise ModelUnavailable(status.problem or "no model is loaded")
    return {"status": "ok", "model_type": status.kind, "model_version": status.version}
