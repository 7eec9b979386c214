"""API keys: `Authorization: Bearer <key>` or `X-API-Key`, on everything but health checks."""
from __future__ import annotations

import hmac
import logging

from flask import Flask, request

from omni_mev.config import Settings
from omni_mev.errors import Unauthorized, error_response

log = logging.getLogger(__name__)
# Load balancers and orchestrators probe these without credentials.
OPEN_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})


def load_keys(settings: Settings) -> tuple[bytes, ...]:
    """Keys from AI_API_KEYS and AI_API_KEYS_FILE (one per line, # comments)."""
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        for line in settings.api_keys_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return tuple(k.encode() for k in keys)


def presented_key() -> bytes | None:
    """The key the client sent, if any."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip().encode()
    key = request.headers.get("X-API-Key")
    return key.strip().encode() if key else None


def matches(candidate: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key (no early exit on a match)."""
    if candidate is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


def init_app(app: Flask) -> None:
    """Require a key on every endpoint but OPEN_PATHS when keys are configured."""
    settings: Settings = app.config["SETTINGS"]
    keys = load_keys(settings)
    app.extensions["omni_mev.auth"] = bool(keys)
    if not keys:
        where = "loopback only" if settings.host in {"127.0.0.1", "::1", "localhost"} else f"{settings.host}, NOT loopback"
        log.warning("API key authentication is off (no AI_API_KEYS / AI_API_KEYS_FILE); bound to %s", where)
        return
    log.info("API key authentication is on (%d key%s)", len(keys), "" if len(keys) == 1 else "s")

    @app.before_request
    def require_key():
        if request.path in OPEN_PATHS or matches(presented_key(), keys):
            return None
        response, status = error_response(Unauthorized("Missing or invalid API key."))
        response.headers["WWW-Authenticate"] = 'Bearer realm="omni-mev"'
        return response, status
