"""Python client for omni-mev: connection reuse, timeouts, typed results.

    from omni_mev.client import Client
    with Client("http://127.0.0.1:8001", api_key=None, timeout=1.0) as client:
        prediction = client.predict([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0])
        if prediction.decision:
            ...
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

Vector = Sequence[float] | Mapping[str, float]


class OmniMevError(Exception):
    """The service answered with an error: status, code, message and bad fields."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, list[str]] | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.body = body or {}  # the whole answer, e.g. per-item results of a 409 on /outcomes


@dataclass(frozen=True)
class Execution:
    """What happened to a positive decision (see docs/trading.md)."""

    status: str
    reason: str = ""
    engine_status: int | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class Prediction:
    """One scored opportunity."""

    decision: bool
    confidence: float
    opportunity_id: str | None = None
    execution: Execution | None = None


@dataclass(frozen=True)
class PredictResult(Prediction):
    """The answer of POST /predict."""

    threshold: float = 0.0
    mode: str = ""
    inference_time_ms: float = 0.0
    model_type: str = ""
    model_version: str = ""
    cached: bool = False


@dataclass(frozen=True)
class BatchResult:
    """The answer of POST /predict/batch: one prediction per item, in order."""

    results: list[Prediction]
    threshold: float
    mode: str
    model_type: str
    model_version: str
    inference_time_ms: float
    decisions: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decisions", [r.decision for r in self.results])


def _execution(body: Mapping[str, Any]) -> Execution | None:
    raw = body.get("execution")
    return None if raw is None else Execution(raw["status"], raw.get("reason", ""), raw.get("engine_status"),
                                              raw.get("latency_ms"))


class Client:
    """A pooled HTTP session to one omni-mev endpoint (thread-safe for reads, one per thread is simplest)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8001", api_key: str | None = None,
                 timeout: float = 1.0, verify: bool | str = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify
        self.session.headers["Content-Type"] = "application/json"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.session.request(method, self.base_url + path, json=body, timeout=self.timeout)
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = None
        if response.status_code >= 400:
            payload = payload if isinstance(payload, dict) else {}
            raise OmniMevError(response.status_code, payload.get("error", "http_error"),
                               payload.get("message", response.reason), payload.get("fields"), payload)
        return payload

    @staticmethod
    def _item(features: Vector, history: Sequence[Vector] | None, opportunity_id: str | None,
              dispatch: bool | None) -> dict[str, Any]:
        item: dict[str, Any] = {"features": features if isinstance(features, Mapping) else list(features)}
        if history:
            item["history"] = [h if isinstance(h, Mapping) else list(h) for h in history]
        if opportunity_id is not None:
            item["opportunity_id"] = opportunity_id
        if dispatch is not None:
            item["dispatch"] = dispatch
        return item

    def predict(self, features: Vector, history: Sequence[Vector] | None = None,
                opportunity_id: str | None = None, dispatch: bool | None = None) -> PredictResult:
        """Score one opportunity (optionally with up to 31 earlier ones, oldest first)."""
        body = self._call("POST", "/predict", self._item(features, history, opportunity_id, dispatch))
        return PredictResult(
            decision=body["decision"], confidence=body["confidence"], opportunity_id=body.get("opportunity_id"),
            execution=_execution(body), threshold=body["threshold"], mode=body["mode"],
            inference_time_ms=body["inference_time_ms"], model_type=body["model_type"],
            model_version=body["model_version"], cached=body.get("cached", False),
        )

    def predict_batch(self, items: Sequence[Vector | Mapping[str, Any]]) -> BatchResult:
        """Score many opportunities: plain vectors, or dicts shaped like a /predict body."""
        payload = [item if isinstance(item, Mapping) and "features" in item else {"features": list(item)}
                   for item in items]
        body = self._call("POST", "/predict/batch", {"items": payload})
        results = [Prediction(r["decision"], r["confidence"], r.get("opportunity_id"), _execution(r))
                   for r in body["results"]]
        return BatchResult(results, body["threshold"], body["mode"], body["model_type"], body["model_version"],
                           body["inference_time_ms"])

    def post_outcomes(self, outcomes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Report what happened: dicts with opportunity_id, success (or executed: false), realised_pnl_usd,
        observed_at. Returns the counts and per-item results; a conflict raises OmniMevError (409)."""
        return self._call("POST", "/outcomes", [dict(o) for o in outcomes])

    def quality(self, window: str = "1h", model: str | None = None) -> dict[str, Any]:
        """GET /quality: live AUC, calibration, coverage and PnL over the window (1h, 24h, 7d)."""
        query = f"?window={window}" + (f"&model={model}" if model else "")
        return self._call("GET", "/quality" + query)

    def health(self) -> bool:
        """True when the answering worker has a model."""
        try:
            self._call("GET", "/health")
        except OmniMevError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """GET /status."""
        return self._call("GET", "/status")

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
