"""Helpers shared by the blueprints: reading bodies and counting scoring outcomes."""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, request

from omni_mev import metrics
from omni_mev.jsonio import loads_object

_STARTED = "omni_mev.started"


def json_object(raw: bytes | None = None) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise; 413 beyond the size limit)."""
    return loads_object(request.get_data(cache=False) if raw is None else raw)


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    if status == 401:
        return "unauthorized"
    if status < 500:
        return "invalid"
    return "error"


def count_outcomes(blueprint: Blueprint, endpoints: set[str] | None = None) -> None:
    """Count and time the blueprint's scoring requests (all, or these endpoints).

    ai_requests_total{endpoint, outcome} and ai_request_duration_ms{endpoint}.
    """

    def start() -> None:
        request.environ[_STARTED] = time.perf_counter()

    def count(response: Response) -> Response:
        if endpoints is None or request.endpoint in endpoints:
            rule = request.url_rule
            started = request.environ.get(_STARTED)
            elapsed = None if started is None else (time.perf_counter() - started) * 1000.0
            metrics.count_request(rule.rule if rule is not None else request.path, _outcome(response.status_code),
                                  elapsed)
        return response

    blueprint.before_request(start)
    blueprint.after_request(count)
