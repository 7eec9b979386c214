"""Prometheus metrics, exact across gunicorn workers through the multiprocess directory.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported:
gunicorn.conf.py sets it in the master, and workers inherit it. Without it (the
Flask test client, `flask run`) the metrics live in this process's registry.

Workers only write metrics; gunicorn's master serves them, through
prometheus-flask-exporter's GunicornPrometheusMetrics (gunicorn.conf.py), on
PROMETHEUS_PORT.
"""
from __future__ import annotations

import os
import struct
import threading
import time
from bisect import bisect_left
from collections import Counter as Occurrences
from collections import defaultdict
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from omni_mev import prometheus_internals
from omni_mev.features import FEATURE_NAMES

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_pid = os.getpid()


def _process_id() -> int:
    """os.getpid() without the system call: refreshed in each child after fork."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


# In multiprocess mode every metric write first asks which process it is in,
# to switch files after a fork; os.getpid() is a system call, and with seven
# writes per /predict it cost ~9 µs per request (docs/benchmarks.md).
os.register_at_fork(after_in_child=_forked)
if os.environ.get(MULTIPROC_VARIABLE):
    prometheus_internals.use_multiprocess_values(_process_id)
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
# Confidence of every scored opportunity: the distribution dashboards and the
# drift alert compare over time. The buckets are fixed: the threshold is a setting.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CONFIDENCE = Histogram("ai_confidence", "Confidence of each scored opportunity", buckets=CONFIDENCE_BUCKETS)
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
    "ai_model_info", "Model serving in each live worker (value 1), and the provider or device running it",
    ["type", "version", "device"], multiprocess_mode="livemax",
)
REDIS_CIRCUIT_OPEN = Gauge(
    "ai_redis_circuit_open", "1 while a worker leaves an unreachable Redis alone (circuit breaker open)",
    multiprocess_mode="livemax",
)
# Worker lifecycle: the master counts every worker that ends; a worker counts
# its own clean end (reload, stop, recycling). The difference is workers that
# died: killed, crashed, out of memory, or aborted for silence.
WORKER_EXITS = Counter("ai_worker_exits", "Workers that ended, any cause (counted by the gunicorn master)")
WORKER_CLEAN_EXITS = Counter(
    "ai_worker_clean_exits", "Workers that ended on their own terms: reload, stop, recycling after max_requests"
)
WORKER_TIMEOUTS = Counter("ai_worker_timeouts", "Workers the master aborted for being silent past the timeout")
CACHE_REQUESTS = Counter("ai_cache_requests", "Prediction cache lookups by result", ["result"])
FEATURE_OUT_OF_RANGE = Counter(
    "ai_feature_out_of_range", "Inputs outside the training data's observed range, per feature", ["feature"]
)
DECISIONS = Counter("ai_decisions", "Decisions taken, by value", ["decision"])
DISPATCHES = Counter(
    "ai_dispatches", "Live dispatches by outcome (dispatched, rejected, failed, expired), and orders not sent: "
    "duplicate, unclaimed (no cross-instance claim could be made), unlogged (the outbox could not be written); "
    "sent_unclaimed counts those sent without a claim (AI_DISPATCH_CLAIM_FAIL_OPEN)", ["status"]
)
DISPATCH_STATUSES = ("dispatched", "rejected", "failed", "expired", "duplicate", "unclaimed", "unlogged",
                     "sent_unclaimed")
DISPATCH_LATE = Counter(
    "ai_dispatch_late", "Approved orders never sent because their deadline passed first: upstream = already past "
    "it when the request reached this process (queued or replayed in front), local = made late here (a lock, a "
    "reload, the disk, the outbox's database)", ["cause"],
)
DISPATCH_DELAY_S = Histogram(
    "ai_dispatch_local_delay_seconds", "From a request's arrival in this process to its orders' intents on record "
    "(claimed and committed), seconds", buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                                                  1.0, 2.0, 5.0),
)
DISPATCH_RECONCILED = Counter(
    "ai_dispatch_reconciled", "Unknown outcomes settled by asking the engine by key, by verdict (executed, "
    "rejected, not_executed)", ["verdict"],
)
DISPATCH_RECONCILE_ERRORS = Counter(
    "ai_dispatch_reconcile_errors", "Asks of the engine by key that got no verdict (asked again later)"
)
DISPATCH_UNRECONCILED = Gauge(
    "ai_dispatch_unreconciled", "Intents whose engine answer is unknown and could not be had by key: asked at "
    "least once without a verdict (omni-mev decisions lists them)", multiprocess_mode="livemax",
)
SHADOW_AGREEMENT = Counter("ai_shadow_agreement", "Shadow model's decision agrees with the served one", ["agree"])
SHADOW_DIFFERENCE = Histogram(
    "ai_shadow_confidence_difference", "Shadow confidence minus served confidence",
    buckets=(-0.5, -0.2, -0.1, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
IMPLAUSIBLE = Counter(
    "ai_implausible", "Scored opportunities failing a plausibility check, by check (docs/model.md)", ["check"]
)
IMPLAUSIBLE_REFUSED = Counter(
    "ai_implausible_refused", "Positive model decisions refused because the opportunity is implausible"
)
LEDGER_RECORDS = Counter("ai_ledger_records", "Predictions written to the ledger")
LEDGER_PENDING = Gauge(
    "ai_ledger_pending", "Predictions queued for the ledger and not yet written (all live workers)",
    multiprocess_mode="livesum",
)
LEDGER_OLDEST_PENDING = Gauge(
    "ai_ledger_oldest_pending_timestamp_seconds", "Per worker: when the oldest prediction not yet written was "
    "scored (Unix time), or the time of its writer's last look when none waits, so time() minus it is how far the "
    "writer is behind; 0 before the worker's first ledger write",
    multiprocess_mode="liveall",
)
LEDGER_WRITE_ERRORS = Counter("ai_ledger_write_errors", "Failed ledger writes (the rows are kept and retried)")
LEDGER_DROPPED = Counter("ai_ledger_dropped", "Unwritten predictions dropped: the database was unreachable too long")
LEDGER_DEAD_LETTERS = Counter(
    "ai_ledger_dead_letters", "Rows the ledger's database refused, set aside in the dead-letter file", ["table"]
)
OUTCOMES = Counter("ai_outcomes", "Outcomes posted, by result (stored, duplicate, unknown, conflict, invalid)",
                   ["result"])
SHADOW_ERRORS = Counter("ai_shadow_errors", "Shadow model failures (never affect the response)")

# Children resolved once: labels() costs a dict lookup and a lock per call, on
# the hot path.
_OUT_OF_RANGE = {name: FEATURE_OUT_OF_RANGE.labels(feature=name) for name in FEATURE_NAMES}
_DECIDED = {True: DECISIONS.labels(decision="true"), False: DECISIONS.labels(decision="false")}
_SHADOW_AGREES = {True: SHADOW_AGREEMENT.labels(agree="true"), False: SHADOW_AGREEMENT.labels(agree="false")}
_REQUEST_CHILDREN: dict[tuple[str, str], Any] = {}
_DURATION_CHILDREN: dict[str, Any] = {}


class DirectWrites:
    """Every metric write goes to this process's shared file at once."""

    def inc(self, child: Any, amount: float = 1.0) -> None:
        child.inc(amount)

    def observe(self, histogram: Any, value: float) -> None:
        histogram.observe(value)

    def observe_many(self, histogram: Any, values: np.ndarray) -> None:
        tally = _Tally(prometheus_internals.bucket_bounds(histogram))
        tally.add_many(values)
        tally.write(histogram)

    def set_latest(self, gauge: Any, value: float) -> None:
        gauge.set(value)

    def flush(self) -> None:
        pass


class _Tally:
    """Observations of one histogram since the last flush: counts per bucket and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def add(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_many(self, values: np.ndarray) -> None:
        """add() for every value, in one pass (a batch's confidences)."""
        found = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds))
        for bucket, count in enumerate(found.tolist()):
            self.counts[bucket] += count
        self.total += float(values.sum(dtype=np.float64))

    def write(self, histogram: Any) -> None:
        """Add these observations to the histogram's shared values."""
        prometheus_internals.add_observations(histogram, self.total, self.counts)


class BufferedWrites:
    """The hot path's writes, held in this process and written together by flush().

    Each write to the shared files takes a lock and packs into an mmap; the
    seven of a /predict cost ~13 µs (docs/benchmarks.md). The worker flushes
    whenever it has nothing to do and at least every 50 ms under load, so a
    scrape sees every request answered more than 50 ms ago, and a worker
    killed with SIGKILL loses at most that much of its counts. The files hold
    exactly what direct writes would have written.
    """

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._tallies: dict[Any, _Tally] = {}
        self._latest: dict[Any, tuple[float, float]] = {}

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self._counts[child] = self._counts.get(child, 0.0) + amount

    def observe(self, histogram: Any, value: float) -> None:
        self._tally(histogram).add(value)

    def observe_many(self, histogram: Any, values: np.ndarray) -> None:
        self._tally(histogram).add_many(values)

    def _tally(self, histogram: Any) -> _Tally:
        tally = self._tallies.get(histogram)
        if tally is None:
            tally = self._tallies[histogram] = _Tally(prometheus_internals.bucket_bounds(histogram))
        return tally

    def set_latest(self, gauge: Any, value: float) -> None:
        # A "mostrecent" gauge keeps the time of the prediction, not of the flush.
        self._latest[gauge] = (value, time.time())

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        tallies, self._tallies = self._tallies, {}
        latest, self._latest = self._latest, {}
        for child, amount in counts.items():
            child.inc(amount)
        for histogram, tally in tallies.items():
            tally.write(histogram)
        for gauge, (value, at) in latest.items():
            prometheus_internals.set_with_timestamp(gauge, value, at)


_writes: DirectWrites | BufferedWrites = DirectWrites()


def buffer_writes() -> None:
    """Hold hot-path writes until flush(); for a server that calls flush() when idle (omni_mev.workers)."""
    global _writes
    _writes = BufferedWrites()


def flush() -> None:
    """Write what buffer_writes() held back."""
    _writes.flush()


def multiprocess_dir() -> str | None:
    """The shared metrics directory, when running under gunicorn."""
    return os.environ.get(MULTIPROC_VARIABLE) or None


def outcome_of(status: int) -> str:
    """The ai_requests_total outcome label of an HTTP status."""
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    if status == 401:
        return "unauthorized"
    if status < 500:
        return "invalid"
    return "error"


def count_request(endpoint: str, outcome: str, duration_ms: float) -> None:
    """One scoring request finished with this outcome and took this long."""
    child = _REQUEST_CHILDREN.get((endpoint, outcome))
    if child is None:
        child = _REQUEST_CHILDREN[(endpoint, outcome)] = REQUESTS.labels(endpoint=endpoint, outcome=outcome)
    _writes.inc(child)
    timer = _DURATION_CHILDREN.get(endpoint)
    if timer is None:
        timer = _DURATION_CHILDREN[endpoint] = REQUEST_DURATION_MS.labels(endpoint=endpoint)
    _writes.observe(timer, duration_ms)


def observe_dispatch_delays(seconds: list[float]) -> None:
    """Arrival-to-intent times of orders just claimed (off the hot path: the outbox's claimer thread)."""
    for value in seconds:
        DISPATCH_DELAY_S.observe(max(0.0, value))


def observe_inference(elapsed_ms: float) -> None:
    """One model run took this long (ai_inference_latency_ms)."""
    _writes.observe(INFERENCE_LATENCY_MS, elapsed_ms)


def record_confidence(confidence: float) -> None:
    """The latest confidence (ai_prediction_confidence)."""
    _writes.set_latest(PREDICTION_CONFIDENCE, confidence)


def count_decision(decision: bool, confidence: float) -> None:
    """ai_decisions_total and ai_confidence for one decision."""
    _writes.inc(_DECIDED[decision])
    _writes.observe(CONFIDENCE, confidence)


def count_decisions(decisions: Any, confidences: np.ndarray) -> None:
    """ai_decisions_total and ai_confidence for arrays of decisions and their confidences."""
    _writes.observe_many(CONFIDENCE, confidences)
    positive = int(decisions.sum())
    if positive:
        _writes.inc(_DECIDED[True], positive)
    if positive < len(decisions):
        _writes.inc(_DECIDED[False], len(decisions) - positive)


def count_shadow(agreeing: int, disagreeing: int, differences: Any) -> None:
    """Shadow decisions that agree or not with the served ones, and confidence differences."""
    if agreeing:
        _writes.inc(_SHADOW_AGREES[True], agreeing)
    if disagreeing:
        _writes.inc(_SHADOW_AGREES[False], disagreeing)
    for difference in differences:
        _writes.observe(SHADOW_DIFFERENCE, float(difference))


def count_implausible(checks: Any, refused: int = 0) -> None:
    """Failed plausibility checks (an iterable of check names, repeats counted) and refusals."""
    for check, count in Occurrences(checks).items():
        IMPLAUSIBLE.labels(check=check).inc(count)
    if refused:
        IMPLAUSIBLE_REFUSED.inc(refused)


def record_fallback(reason: str, from_type: str, to_type: str) -> None:
    """The fallback chain handed over from one runtime to another."""
    MODEL_FALLBACKS.labels(reason=reason, from_type=from_type, to_type=to_type).inc()


_serving: dict[str, str] = {}


def set_serving_model(kind: str | None, version: str | None, device: str | None = None) -> None:
    """This worker serves this model (or none) on this provider or device; the previous one drops to 0."""
    if _serving:
        MODEL_INFO.labels(**_serving).set(0)
        _serving.clear()
    if kind is not None:
        _serving.update(type=kind, version=version or "unknown", device=device or "unknown")
        MODEL_INFO.labels(**_serving).set(1)


def count_out_of_range(counts: dict[str, int]) -> None:
    """Inputs outside the training range: {feature name: how many}."""
    for name, count in counts.items():
        _OUT_OF_RANGE[name].inc(count)


def _aggregating_registry() -> CollectorRegistry:
    """The registry to read: every process's files when under gunicorn (or several stream processes), else this
    process's own."""
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return registry
    return REGISTRY


# A process writing its first metric creates its file, then sizes it (prometheus_client's MmapedDict: open, then
# truncate): a read in between finds an empty file and fails with struct.error. The read is tried again, a few
# milliseconds later, for at most READ_ATTEMPTS * READ_RETRY_S.
READ_ATTEMPTS = 10
READ_RETRY_S = 0.005


def collect() -> list[Metric]:
    """Every metric, aggregated over all workers when under gunicorn."""
    attempt = 1
    while True:
        try:
            return list(_aggregating_registry().collect())
        except struct.error:
            if attempt == READ_ATTEMPTS:
                raise
            attempt += 1
            time.sleep(READ_RETRY_S)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type: the stream server serves them on its own
    port, as it is no gunicorn worker."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_aggregating_registry()), CONTENT_TYPE_LATEST


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
    implausible = {s.labels["check"]: int(s.value) for s in _samples(metrics, "ai_implausible")
                   if s.name.endswith("_total") and s.value}
    refused = sum(int(s.value) for s in _samples(metrics, "ai_implausible_refused") if s.name.endswith("_total"))
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
        "implausible": {"checks": implausible, "refused": refused},
    }

