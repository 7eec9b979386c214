"""The real gunicorn with gunicorn.conf.py and 2 workers, on a free loopback port."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from omni_mev.runtime.onnx_runtime import OnnxModel
from omni_mev.training.export import random_raw_features
from tests.conftest import MODELS, ROOT
from tests.servers import EXAMPLE, Gunicorn, wait_until

SNAPSHOT_TTL_S = 1.1  # /status aggregates at most once a second


def _requests_by_pid(metrics_dir: str) -> dict[int, float]:
    """ai_requests_total per worker, read from each worker's own counter file."""
    counts = {}
    for path in glob.glob(os.path.join(metrics_dir, "counter_*.db")):
        pid = int(os.path.basename(path)[len("counter_"):-len(".db")])
        total = sum(s.value for m in MultiProcessCollector._read_metrics([path]).values() if m.name == "ai_requests"
                    for s in m.samples)
        counts[pid] = total
    return counts


@pytest.fixture(scope="module")
def service():
    with Gunicorn(workers=2) as server:
        yield server


def test_predictions_exact_across_two_workers(service):
    def one(_):
        return service.post("/predict", {"features": EXAMPLE})

    time.sleep(SNAPSHOT_TTL_S)
    before = service.get("/status")[1]["total_requests"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert all(status == 200 for status, _, _ in results)
    assert len({body["confidence"] for _, body, _ in results}) == 1
    served = {pid: n for pid, n in _requests_by_pid(service.metrics_dir).items() if n > 0}
    assert set(served) == service.worker_pids()
    assert len(served) == 2
    time.sleep(SNAPSHOT_TTL_S)
    statuses = [service.get("/status")[1] for _ in range(6)]
    assert {s["total_requests"] - before for s in statuses} == {200}


def test_metrics_port_aggregates_workers(service):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).read().decode()
    lines = [line for line in text.splitlines() if line.startswith('ai_requests_total{endpoint="/predict",outcome="ok"}')]
    assert len(lines) == 1
    assert float(lines[0].split()[-1]) == sum(_requests_by_pid(service.metrics_dir).values())
    assert "ai_inference_latency_ms_bucket" in text and "ai_prediction_confidence" in text


def test_health_and_status_through_gunicorn(service):
    status, body, _ = service.get("/health")
    assert status == 200 and body["model_type"] == "onnx"
    status, body, headers = service.get("/nowhere")
    assert status == 404 and body["error"] == "not_found"
    assert headers["Content-Type"].startswith("application/json")


def _reference(x: np.ndarray) -> np.ndarray:
    model = OnnxModel(MODELS / "lstm_omni.onnx")
    model.load()
    return model.predict(x)


@pytest.mark.parametrize("damage", ["removed", "corrupted"])
def test_pytorch_serves_when_onnx_unusable(model_copy, damage):
    if damage == "removed":
        model_copy.unlink()
    else:
        model_copy.write_bytes(b"garbage" * 1000)
    windows = random_raw_features(np.random.default_rng(3), 5, 4)
    expected = _reference(windows)
    with Gunicorn({"AI_MODEL_PATH": str(model_copy)}) as server:
        assert server.get("/status")[1]["model_type"] == "pytorch"
        for window, want in zip(windows, expected):
            payload = {"features": window[-1].tolist(), "history": window[:-1].tolist()}
            status, body, _ = server.post("/predict", payload)
            assert status == 200 and body["model_type"] == "pytorch"
            assert body["confidence"] == pytest.approx(float(want), abs=1e-5)
        # One per worker, at load (a worker may still be importing torch while its sibling serves).
        wait_until(lambda: server.get("/metrics_summary")[1]["model_fallbacks"] >= 2, 30, what="both workers fell back")
        time.sleep(SNAPSHOT_TTL_S)
        assert server.get("/metrics_summary")[1]["model_fallbacks"] == 2


def test_no_model_at_all_health_503_and_workers_stay_up(tmp_path):
    with Gunicorn({"AI_MODEL_PATH": str(tmp_path / "nothing.onnx")}) as server:
        status, body, _ = server.get("/health")
        assert status == 503 and body["error"] == "model_unavailable"
        pids = server.worker_pids()
        time.sleep(1.0)
        assert server.alive() and server.worker_pids() == pids  # no crash loop
        status, body, _ = server.post("/predict", {"features": EXAMPLE})
        assert status == 503 and "onnx: its file cannot be read" in body["message"]
        wait_until(lambda: server.get("/status")[1]["ai_engine"] == "degraded", 5, what="status degraded")


def test_gunicorn_conf_also_runs_the_stock_sync_worker():
    """AI_WORKER_CLASS=sync: gunicorn's own worker boots with the same config, scores, stores outcomes (waiting
    for the commit in the request, as a worker that cannot park an answer must) and counts requests."""
    with Gunicorn({"AI_WORKER_CLASS": "sync"}) as server:
        status, body, _ = server.post("/predict", {"features": EXAMPLE, "opportunity_id": "sync-1"})
        assert status == 200 and 0.0 <= body["confidence"] <= 1.0
        # The other worker may answer before the prediction reaches the ledger: 404 with Retry-After, as documented.
        def stored() -> dict | None:
            status, body, _ = server.post("/outcomes", {"opportunity_id": "sync-1", "success": True})
            assert status in (201, 404), body
            return body if status == 201 else None

        assert wait_until(stored, 10, what="the outcome stored")["result"] == "stored"
        wait_until(lambda: sum(_requests_by_pid(server.metrics_dir).values()) >= 2, 10,
                   what="the requests counted in the shared metric files")
        assert "Using worker: sync" in server.output()


def test_the_worker_class_loads_without_the_metrics():
    """gunicorn's master loads the worker class before its on_starting hook empties the metrics directory: a
    metrics module imported by then would write the master's counters (worker exits) to files that hook unlinks."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, omni_mev.workers; "
                             "print(sorted(m for m in sys.modules if m == 'prometheus_client' or m == 'omni_mev.metrics'))"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
