"""API keys on the HTTP service: checked by the front (omni_mev.api.direct) on every route the route table does not
open to probes; the keys and the check are the core's (omni_mev.core.keys)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from omni_mev.config import Settings
from omni_mev.core.keys import ApiKeys, load_keys

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)
EXTENSION = "omni_mev.auth"


def keys_of(app: Flask) -> ApiKeys:
    return app.extensions[EXTENSION]


def init_app(app: Flask) -> ApiKeys:
    """The configured keys, checked by the front on every route that is not open."""
    settings: Settings = app.config["SETTINGS"]
    api_keys = app.extensions[EXTENSION] = ApiKeys(load_keys(settings))
    if not api_keys.enabled:
        where = "loopback only" if settings.host in {"127.0.0.1", "::1", "localhost"} else f"{settings.host}, NOT loopback"
        log.warning("API key authentication is off (no AI_API_KEYS / AI_API_KEYS_FILE); bound to %s", where)
    else:
        log.info("API key authentication is on (%d key%s)", len(api_keys.keys), "" if len(api_keys.keys) == 1 else "s")
    return api_keys
