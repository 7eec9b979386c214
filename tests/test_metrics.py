"""Prometheus metrics on their own port: exact across workers, through worker deaths."""
from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from tests.servers import EXAMPLE, Gunicorn, wait_until

SNAPSHOT_TTL_S = 1.1


def scrape(server: Gunicorn) -> dict[str, float]:
    """The metrics port's samples as {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="module")
def service():
    with Gunicorn(workers=2) as server:
        yield server


def _predict(server: Gunicorn, n: int) -> None:
    for _ in range(n):
        assert server.post("/predict", {"features": EXAMPLE})[0] == 200


def _counted(server: Gunicorn, name: str, expected: float) -> None:
    """Wait until the scraped count is `expected`: workers write their counts when idle (at most 50 ms late)."""
    wait_until(lambda: scrape(server).get(name, 0.0) == expected, 5, what=f"{name} == {expected}")
    time.sleep(0.2)
    assert scrape(server).get(name, 0.0) == expected  # and not more


def test_counts_survive_a_killed_worker(service):
    ok = 'ai_requests_total{endpoint="/predict",outcome="ok"}'
    start = scrape(service).get(ok, 0.0)
    _predict(service, 60)
    _counted(service, ok, start + 60)
    victim = min(service.worker_pids())
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(service.worker_pids()) == 2 and victim not in service.worker_pids(), 20,
               what="worker respawned")
    service.wait_ready()
    _predict(service, 40)
    _counted(service, ok, start + 100)
    time.sleep(SNAPSHOT_TTL_S)
    assert service.get("/status")[1]["total_requests"] >= 100
    # Only live workers report the model they serve.
    info = [k for k, v in scrape(service).items() if k.startswith("ai_model_info") and v == 1]
    assert len(info) == 1 and 'type="onnx"' in info[0]


def test_status_total_matches_metrics_port(service):
    _predict(service, 10)
    service.post("/predict", {"features": [1, 2]})
    time.sleep(SNAPSHOT_TTL_S)
    total = service.get("/status")[1]["total_requests"]
    scraped = sum(v for k, v in scrape(service).items() if k.startswith("ai_requests_total"))
    assert total == scraped


def test_drift_counter_per_feature(service):
    key = 'ai_feature_out_of_range_total{feature="profit_usd"}'
    other = 'ai_feature_out_of_range_total{feature="gas_millions"}'
    before = scrape(service)
    far_out = [1e6, *EXAMPLE[1:]]
    for _ in range(3):
        assert service.post("/predict", {"features": far_out})[0] == 200
    after = scrape(service)
    assert after[key] - before.get(key, 0) == 3
    assert after.get(other, 0) == before.get(other, 0)


def test_latency_histogram_and_last_confidence(service):
    _, body, _ = service.post("/predict", {"features": [*EXAMPLE[:5], 0.123, *EXAMPLE[6:]]})

    def with_latest_confidence() -> dict[str, float] | None:
        samples = scrape(service)
        return samples if abs(samples.get("ai_prediction_confidence", -1) - body["confidence"]) < 1e-6 else None

    samples = wait_until(with_latest_confidence, 5, what="the latest confidence scraped")
    assert samples["ai_inference_latency_ms_count"] >= 1
    assert samples['ai_inference_latency_ms_bucket{le="+Inf"}'] == samples["ai_inference_latency_ms_count"]
    time.sleep(SNAPSHOT_TTL_S)
    summary = service.get("/metrics_summary")[1]
    assert summary["last_confidence"] == pytest.approx(body["confidence"], abs=1e-6)
    assert summary["inference_latency"]["p99_ms"] is not None


def test_buffered_writes_flush_to_what_direct_writes_write():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from omni_mev.metrics import LATENCY_BUCKETS_MS, BufferedWrites, DirectWrites

    def family(tag: str):
        registry = CollectorRegistry()
        return registry, (Counter(f"c_{tag}", "c", ["k"], registry=registry),
                          Histogram(f"h_{tag}", "h", buckets=LATENCY_BUCKETS_MS, registry=registry),
                          Gauge(f"g_{tag}", "g", registry=registry))

    def samples(registry, tag: str):
        return sorted((s.name.replace(tag, ""), tuple(sorted(s.labels.items())), s.value)
                      for m in registry.collect() for s in m.samples if not s.name.endswith("_created"))

    direct_registry, direct = family("DIRECT")
    buffered_registry, buffered = family("BUFFERED")
    buffer = BufferedWrites()
    values = [0.001, 0.005, 0.0051, 0.03, 0.2, 7.0, 49.0, 50.0, 51.0, 1e9]
    for writes, (counter, histogram, gauge) in ((DirectWrites(), direct), (buffer, buffered)):
        for i, value in enumerate(values):
            writes.inc(counter.labels(k=str(i % 3)), i)
            writes.observe(histogram, value)
            writes.set_latest(gauge, value)
    assert samples(buffered_registry, "BUFFERED") != samples(direct_registry, "DIRECT")  # nothing written before the flush
    buffer.flush()
    assert samples(buffered_registry, "BUFFERED") == samples(direct_registry, "DIRECT")
    buffer.flush()  # a second flush writes nothing more
    assert samples(buffered_registry, "BUFFERED") == samples(direct_registry, "DIRECT")


def test_a_metrics_file_another_process_is_creating_is_read_again(tmp_path, monkeypatch):
    """A worker writing its first metric creates its file and only then sizes it: a /status or /metrics_summary
    reading in between found an empty file, and answered 500 (struct.error). The read is tried again."""
    import struct
    import threading

    from omni_mev import metrics

    monkeypatch.setenv(metrics.MULTIPROC_VARIABLE, str(tmp_path))
    being_created = tmp_path / "counter_99999.db"
    being_created.touch()
    with pytest.raises(struct.error):  # what prometheus_client does with such a file
        list(metrics._aggregating_registry().collect())
    done = threading.Timer(3 * metrics.READ_RETRY_S, being_created.unlink)
    done.start()
    try:
        assert isinstance(metrics.collect(), list)
    finally:
        done.join()
