"""API keys: `Authorization: Bearer <key>` or `X-API-Key`, however the transport carries its headers."""
from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from omni_mev.config import Settings
from omni_mev.errors import Unauthorized

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


def presented_key(authorization: str | None, api_key: str | None) -> bytes | None:
    """The key a client sent: the Authorization header's bearer token, else X-API-Key."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip().encode()
    return api_key.strip().encode() if api_key else None


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

    def check(self, authorization: str | None, api_key: str | None) -> None:
        """Unauthorized (401) unless a request with these headers may pass."""
        if self.keys and not matches(presented_key(authorization, api_key), self.keys):
            raise Unauthorized(UNAUTHORIZED)

    def check_environ(self, environ: Mapping[str, Any]) -> None:
        """check() on a WSGI environ's headers."""
        if self.keys:
            self.check(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
