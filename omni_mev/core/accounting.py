"""Request accounting, one rule for every transport: ai_requests_total and ai_request_duration_ms by endpoint."""
from __future__ import annotations

import time

from omni_mev import metrics


def count(endpoint: str, status: int, started: float) -> None:
    """One request to `endpoint` answered with this (HTTP-like) status; `started` is its time.perf_counter()."""
    metrics.count_request(endpoint, metrics.outcome_of(status), (time.perf_counter() - started) * 1000.0)
