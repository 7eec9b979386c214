"""Prometheus metrics, exact across gunicorn workers through the multiprocess directory.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported:
gunicorn.conf.py sets it in the master, and workers inherit it. Without it (the
Flask test client, `flask run`) the metrics live in this process's registry.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from typing import Any

from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from omni_mev.features import FEATURE_NAMES

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Inference takes ~10-50 us on ONNX and ~100 us on PyTorch: the buckets resolve
# that range and still catch a pathological millisecond.
LATENCY_BUCKETS_MS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0)
SUMMARY_TTL_S = 1.0

PREDICTION_CONFIDENCE = Gauge(
    "ai_prediction_confidence", "Confidence of the latest prediction", multiprocess_mode="mostrecent"
)
INFERENCE_LATENCY_MS = Histogram(
    "ai_inference_latency_ms", "Model inference time per request, milliseconds", buckets=LATENCY_BUCKETS_MS
)
REQUESTS = Counter(
    "ai_requests", "Scoring requests by endpoint and outcome (ok, invalid, unauthorized, error, unavailable)",
    ["endpoint", "outcome"],
)
REQUEST_DURATION_MS = Histogram(
    "ai_request_duration_ms", "Time in the application per scoring request, milliseconds", ["endpoint"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 50.0, 250.0, 1000.0),
)
MODEL_FALLBACKS = Counter(
    "ai_model_fallback", "Times a worker fell back to the next model runtime", ["reason", "from_type", "to_type"]
)
MODEL_INFO = Gauge(
    "ai_model_info", "Model serving in each live worker (value 1)", ["type", "version"], multiprocess_mode="livemax"
)
CACHE_REQUESTS = Counter("ai_cache_requests", "Prediction cache lookups by result", ["result"])
FEATURE_OUT_OF_RANGE = Counter(
    "ai_feature_out_of_range", "Inputs outside the training data's observed range, per feature", ["feature"]
)
DECISIONS = Counter("ai_decisions", "Decisions taken, by value", ["decision"])
DISPATCHES = Counter(
    "ai_dispatches", "Live dispatches by outcome (dispatched, rejected, failed, timeout, duplicate)", ["status"]
)
SHADOW_AGREEMENT = Counter("ai_shadow_agreement", "Shadow model's decision agrees with the served one", ["agree"])
SHADOW_DIFFERENCE = Histogram(
    "ai_shadow_confidence_difference", "Shadow confidence minus served confidence",
    buckets=(-0.5, -0.2, -0.1, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
SHADOW_ERRORS = Counter("ai_shadow_errors", "Shadow model failures (never affect the response)")

# Children resolved once: labels() costs a dict lookup and a lock per call, on
# the hot path.
_OUT_OF_RANGE = {name: FEATURE_OUT_OF_RANGE.labels(feature=name) for name in FEATURE_NAMES}
DECIDED = {True: DECISIONS.labels(decision="true"), False: DECISIONS.labels(decision="false")}
_REQUEST_CHILDREN: dict[tuple[str, str], Any] = {}
_DURATION_CHILDREN: dict[str, Any] = {}


def multiprocess_dir() -> str | None:
    """The shared metrics directory, when running under gunicorn."""
    return os.environ.get(MULTIPROC_VARIABLE) or None


def count_request(endpoint: str, outcome: str, duration_ms: float | None = None) -> None:
    """One scoring request finished with this outcome (and took this long)."""
    child = _REQUEST_CHILDREN.get((endpoint, outcome))
    if child is None:
        child = _REQUEST_CHILDREN[(endpoint, outcome)] = REQUESTS.labels(endpoint=endpoint, outcome=outcome)
    child.inc()
    if duration_ms is not None:
        timer = _DURATION_CHILDREN.get(endpoint)
        if timer is None:
            timer = _DURATION_CHILDREN[endpoint] = REQUEST_DURATION_MS.labels(endpoint=endpoint)
        timer.observe(duration_ms)


def count_decisions(decisions: Any) -> None:
    """ai_decisions_total for a boolean array of decisions."""
    positive = int(decisions.sum())
    if positive:
        DECIDED[True].inc(positive)
    if positive < len(decisions):
        DECIDED[False].inc(len(decisions) - positive)


def record_fallback(reason: str, from_type: str, to_type: str) -> None:
    """The fallback chain handed over from one runtime to another."""
    MODEL_FALLBACKS.labels(reason=reason, from_type=from_type, to_type=to_type).inc()


_serving: dict[str, str] = {}


def set_serving_model(kind: str | None, version: str | None) -> None:
    """This worker serves this model (or none); the previous one drops to 0."""
    if _serving:
        MODEL_INFO.labels(**_serving).set(0)
        _serving.clear()
    if kind is not None:
        _serving.update(type=kind, version=version or "unknown")
        MODEL_INFO.labels(**_serving).set(1)


def count_out_of_range(counts: dict[str, int]) -> None:
    """Inputs outside the training range: {feature name: how many}."""
    for name, count in counts.items():
        _OUT_OF_RANGE[name].inc(count)


def collect() -> list[Metric]:
    """Every metric, aggregated over all workers when under gunicorn."""
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return list(registry.collect())
    return list(REGISTRY.collect())


class _Snapshot:
    """The aggregation, cached briefly so dashboards polling it cannot slow predictions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = 0.0
        self._value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._taken > SUMMARY_TTL_S:
                self._value = _summarise(collect())
                self._taken = now
            return self._value

    def reset(self) -> None:
        with self._lock:
            self._value = None


snapshot = _Snapshot()


def _samples(metrics: list[Metric], name: str) -> list:
    return [s for m in metrics if m.name == name for s in m.samples]


def _histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Quantile from cumulative (upper bound, count) pairs, interpolated as Prometheus does."""
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            fraction = (rank - lower_count) / span if span else 1.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return lower_bound


def _summarise(metrics: list[Metric]) -> dict[str, Any]:
    by_endpoint: dict[str, dict[str, int]] = defaultdict(dict)
    for sample in _samples(metrics, "ai_requests"):
        if sample.name.endswith("_total"):
            by_endpoint[sample.labels["endpoint"]][sample.labels["outcome"]] = int(sample.value)
    total = sum(sum(v.values()) for v in by_endpoint.values())
    errors = sum(n for v in by_endpoint.values() for outcome, n in v.items() if outcome != "ok")

    buckets: dict[float, float] = defaultdict(float)
    latency_sum = latency_count = 0.0
    for sample in _samples(metrics, "ai_inference_latency_ms"):
        if sample.name.endswith("_bucket"):
            buckets[float(sample.labels["le"])] += sample.value
        elif sample.name.endswith("_sum"):
            latency_sum += sample.value
        elif sample.name.endswith("_count"):
            latency_count += sample.value
    cumulative = sorted(buckets.items())
    latency = {
        "count": int(latency_count),
        "mean_ms": latency_sum / latency_count if latency_count else None,
        **{f"p{int(q * 100)}_ms": _histogram_quantile(q, cumulative) for q in (0.5, 0.9, 0.99)},
    }

    confidence = _samples(metrics, "ai_prediction_confidence")
    fallbacks = sum(s.value for s in _samples(metrics, "ai_model_fallback") if s.name.endswith("_total"))
    cache = {s.labels["result"]: int(s.value) for s in _samples(metrics, "ai_cache_requests")
             if s.name.endswith("_total")}
    out_of_range = {s.labels["feature"]: int(s.value) for s in _samples(metrics, "ai_feature_out_of_range")
                    if s.name.endswith("_total") and s.value}
    decisions = {s.labels["decision"]: int(s.value) for s in _samples(metrics, "ai_decisions")
                 if s.name.endswith("_total")}
    serving = sorted({(s.labels["type"], s.labels["version"]) for s in _samples(metrics, "ai_model_info")
                      if s.value})
    return {
        "total_requests": total,
        "errors": errors,
        "requests": {k: dict(v) for k, v in sorted(by_endpoint.items())},
        "decisions": decisions,
        "inference_latency": latency,
        "last_confidence": confidence[0].value if confidence else None,
        "model_fallbacks": int(fallbacks),
        "models_serving": [{"type": t, "version": v} for t, v in serving],
        "cache": cache,
        "feature_out_of_range": out_of_range,
    }


def init_app(app: Flask) -> None:
    """Bind prometheus-flask-exporter: HTTP request metrics, multiprocess under gunicorn."""
    from prometheus_flask_exporter import PrometheusMetrics

    common = {
        # The exporter's per-request HTTP metrics cost ~45 us per request, a
        # sixth of a /predict, and its hooks still cost ~18 us on excluded
        # paths (measured in docs/benchmarks.md). The scoring endpoints have
        # their own leaner metrics (ai_requests_total, ai_request_duration_ms),
        # so the exporter serves the registry and the multiprocess HTTP server.
        "export_defaults": False,
    }
    if multiprocess_dir():
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        exporter = GunicornPrometheusMetrics(app, **common)
    else:
        # A private registry: tests build many apps in one process.
        exporter = PrometheusMetrics(app, path=None, registry=CollectorRegistry(auto_describe=True), **common)
    app.extensions["omni_mev.metrics"] = exporter
