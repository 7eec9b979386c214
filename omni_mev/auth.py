"""API keys: `Authorization: Bearer <key>` or `X-API-Key`, on every route but those the route table opens to probes."""
from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omni_mev.config import Settings
from omni_mev.errors import Unauthorized

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)
EXTENSION = "omni_mev.auth"
UNAUTHORIZED = "Missing or invalid API key."


def load_keys(settings: Settings) -> tuple[bytes, ...]:
    """Keys from AI_API_KEYS and AI_API_KEYS_FILE (one per line, # comments)."""
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        for line in settings.api_keys_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return tuple(k.encode() for k in keys)


def presented_key(environ: Mapping[str, Any]) -> bytes | None:
    """The key the client sent in the WSGI environ, if any."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip().encode()
    key = environ.get("HTTP_X_API_KEY")
    return key.strip().encode() if key else None


def matches(candidate: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key (no early exit on a match)."""
    if candidate is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


class ApiKeys:
    """The configured keys; with none, every request is allowed."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, environ: Mapping[str, Any]) -> None:
        """Unauthorized (401) unless the request may pass."""
        if self.keys and not matches(presented_key(environ), self.keys):
            raise Unauthorized(UNAUTHORIZED)


def keys_of(app: Flask) -> ApiKeys:
    return app.extensions[EXTENSION]


def init_app(app: Flask) -> ApiKeys:
    """The configured keys, checked by the front (omni_mev.api.direct) on every route that is not open."""
    settings: Settings = app.config["SETTINGS"]
    api_keys = app.extensions[EXTENSION] = ApiKeys(load_keys(settings))
    if not api_keys.enabled:
        where = "loopback only" if settings.host in {"127.0.0.1", "::1", "localhost"} else f"{settings.host}, NOT loopback"
        log.warning("API key authentication is off (no AI_API_KEYS / AI_API_KEYS_FILE); bound to %s", where)
    else:
        log.info("API key authentication is on (%d key%s)", len(api_keys.keys), "" if len(api_keys.keys) == 1 else "s")
    return api_keys
