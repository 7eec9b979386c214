"""Python client for omni-mev: connection reuse, timeouts, typed results.

    from omni_mev.client import Client
    with Client("http://127.0.0.1:8001", api_key=None, timeout=1.0) as client:
        prediction = client.predict([10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0])
        if prediction.decision:
            ...
"""
from __future__ import annotations

import json
import time
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


def _predict_result(body: Mapping[str, Any]) -> PredictResult:
    return PredictResult(
        decision=body["decision"], confidence=body["confidence"], opportunity_id=body.get("opportunity_id"),
        execution=_execution(body), threshold=body["threshold"], mode=body["mode"],
        inference_time_ms=body["inference_time_ms"], model_type=body["model_type"],
        model_version=body["model_version"], cached=body.get("cached", False),
    )


# A kept-alive connection is retired this long before the server said it closes idle ones (its Keep-Alive:
# timeout=N hint), so a request never races the server's close.
IDLE_MARGIN_S = 1.0


def _keep_alive_timeout(header: str | None) -> float | None:
    """N of a `Keep-Alive: timeout=N, ...` header, None without one."""
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "timeout":
            try:
                return float(value)
            except ValueError:
                return None
    return None


class Client:
    """A pooled HTTP session to one omni-mev endpoint (thread-safe for reads, one per thread is simplest).

    Connections are kept alive, and retired before the server's idle timeout
    (its Keep-Alive hint): a bot that pauses about that long between requests
    never sends one on a connection the server is closing. A request that
    still finds its reused connection closed before any answer (a worker
    restarting) is sent once more on a new one: scoring has no side effect but
    the ledger row, an order is dispatched at most once per opportunity_id,
    and an outcome is stored once.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8001", api_key: str | None = None,
                 timeout: float = 1.0, verify: bool | str = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify
        self.session.headers["Content-Type"] = "application/json"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self._idle_limit_s: float | None = None
        self._last_answer = 0.0

    def _send(self, method: str, path: str, body: Any) -> requests.Response:
        if self._idle_limit_s is not None and time.monotonic() - self._last_answer > self._idle_limit_s:
            self.session.close()  # idle past the server's timeout, or close to it: new connections
        try:
            response = self.session.request(method, self.base_url + path, json=body, timeout=self.timeout)
        except requests.ConnectionError as error:
            if isinstance(error, requests.ConnectTimeout):
                raise
            self.session.close()
            response = self.session.request(method, self.base_url + path, json=body, timeout=self.timeout)
        self._last_answer = time.monotonic()
        hint = _keep_alive_timeout(response.headers.get("Keep-Alive"))
        self._idle_limit_s = None if hint is None else max(0.0, hint - IDLE_MARGIN_S)
        return response

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._send(method, path, body)
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = None
        if response.status_code >= 400:
            payload = payload if isinstance(payload, dict) else {}
            raise OmniMevError(response.status_code, payload.get("error", "http_error"),
                               payload.get("message", response.reason), payload.get("fields"), payload)
        return payload

    def predict(self, features: Vector, history: Sequence[Vector] | None = None,
                opportunity_id: str | None = None, dispatch: bool | None = None) -> PredictResult:
        """Score one opportunity (optionally with up to 31 earlier ones, oldest first)."""
        return _predict_result(self._call("POST", "/predict", _item(features, history, opportunity_id, dispatch)))

    def predict_batch(self, items: Sequence[Vector | Mapping[str, Any]]) -> BatchResult:
        """Score many opportunities: plain vectors, or dicts shaped like a /predict body."""
        payload = [item if isinstance(item, Mapping) and "features" in item else {"features": list(item)}
                   for item in items]
        body = self._call("POST", "/predict/batch", {"items": payload})
        results = [Prediction(r["decision"], r["confidence"], r.get("opportunity_id"), _execution(r))
                   for r in body["results"]]
        return BatchResult(results, body["threshold"], body["mode"], body["model_type"], body["model_version"],
                           body["inference_time_ms"])

    def post_outcomes(self, outcomes: Sequence[Mapping[str, Any]], retry_unknown_s: float = 5.0) -> dict[str, Any]:
        """Report what happened: dicts with opportunity_id, success (or executed: false), realised_pnl_usd,
        observed_at. Returns the counts and per-item results; a conflict raises OmniMevError (409), an outcome
        observed before its prediction 422.

        The service answers ids it does not know yet at once (their predictions may be a moment from its
        ledger); those alone are sent again, as the answer's retry_after_s says, for up to retry_unknown_s.
        """
        sent = [dict(o) for o in outcomes]
        answer = self._call("POST", "/outcomes", sent)
        deadline = time.monotonic() + retry_unknown_s
        while answer["unknown"] and time.monotonic() < deadline:
            time.sleep(min(answer.get("retry_after_s", 1.0), max(0.0, deadline - time.monotonic())))
            unknown = set(answer["unknown"])
            again = [o for o in sent if o["opportunity_id"] in unknown]
            retried = iter(self._call("POST", "/outcomes", again)["results"])
            results = [next(retried) if item["result"] == "unknown" else item for item in answer["results"]]
            answer = {**answer, **_outcome_counts(results)}
            if not answer["unknown"]:
                answer.pop("retry_after_s", None)
        return answer

    def quality(self, window: str = "1h", model: str | None = None, computed_after: float | None = None,
                timeout_s: float = 60.0) -> dict[str, Any]:
        """GET /quality: live AUC, calibration, coverage and PnL over the window (1h, 24h, 7d), per model version.

        The service computes the report every AI_QUALITY_REFRESH_S; computed_after (a Unix time, e.g. when your
        last outcomes were acknowledged) waits, for up to timeout_s, for a report computed after it.
        """
        query = f"?window={window}" + (f"&model={model}" if model else "")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                report = self._call("GET", "/quality" + query)
                if computed_after is None or report["computed_at"] > computed_after:
                    return report
            except OmniMevError as error:
                if error.code != "quality_not_ready" or computed_after is None:
                    raise
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no quality report computed after {computed_after} within {timeout_s} s")
            time.sleep(0.2)

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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _outcome_counts(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary fields of a POST /outcomes answer, from its per-item results."""
    def ids(kind: str) -> list[str]:
        return [r["opportunity_id"] for r in results if r["result"] == kind]

    counts: dict[str, Any] = {"stored": len(ids("stored")), "duplicates": len(ids("duplicate")),
                              "unknown": ids("unknown"), "conflicts": ids("conflict"), "invalid": ids("invalid"),
                              "results": results}
    return counts


class StreamClient:
    """A WebSocket connection to the stream server (`omni-mev stream`): send many, receive in order.

        with StreamClient("ws://127.0.0.1:8003/stream", api_key=None) as stream:
            sent = [stream.send(vector) for vector in vectors]   # pipelined
            answers = [stream.receive() for _ in sent]             # in the order sent
    """

    def __init__(self, url: str = "ws://127.0.0.1:8003/stream", api_key: str | None = None,
                 timeout: float = 1.0) -> None:
        from websockets.sync.client import connect

        self.timeout = timeout
        # Entered at once and closed by close(): the connection lives as long as this client.
        self.websocket = connect(url, additional_headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
                                 open_timeout=timeout, compression=None).__enter__()
        self._sent = 0

    def send(self, features: Vector, history: Sequence[Vector] | None = None, opportunity_id: str | None = None,
             dispatch: bool | None = None) -> int:
        """Send one opportunity without waiting for its answer; its message id."""
        self._sent += 1
        self.websocket.send(json.dumps({"id": self._sent, **_item(features, history, opportunity_id, dispatch)}))
        return self._sent

    def receive(self) -> PredictResult:
        """The next answer, in the order sent; OmniMevError if it is an error."""
        body = json.loads(self.websocket.recv(timeout=self.timeout))
        if "error" in body:
            raise OmniMevError(0, body["error"], body.get("message", ""), body.get("fields"), body)
        return _predict_result(body)

    def predict(self, features: Vector, history: Sequence[Vector] | None = None,
                opportunity_id: str | None = None, dispatch: bool | None = None) -> PredictResult:
        """Send one opportunity and wait for its answer."""
        self.send(features, history, opportunity_id, dispatch)
        return self.receive()

    def close(self) -> None:
        self.websocket.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
