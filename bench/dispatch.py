"""LIVE dispatch in the benchmark: a 1,000-item batch against a 50 ms engine, and /predict's p99 while a slow
engine holds dispatches.

The engine is the test suite's stub (tests/engine_stub.py: a threaded HTTP server in this process keeping the
engine contract), so it shares the machine's two cores with the service, as wrk does.
"""
from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.run import EXAMPLE, SMOKE, Server, omni_mev, warm, wrk
from tests.engine_stub import EngineStub

# A vector the shipped model approves at THRESHOLD, plausible, so that every item is dispatched.
APPROVED = [30.0, 1.035, 3, 0.3, 0.95, 0.5, 2, 1.0]
THRESHOLD = "0.5"


def _post(url: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("POST", "/predict/batch" if "items" in body else "/predict", body=json.dumps(body),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _outcomes(log: Path, ids: set[str]) -> Counter:
    statuses: Counter = Counter()
    for line in log.read_bytes().splitlines():
        record = json.loads(line)
        if record["event"] == "outcome" and record["opportunity_id"] in ids:
            statuses[record["status"]] += 1
    return statuses


def live_batch(servers: list[Server], scratch: Path, items: int, repeats: int, settings: dict[str, str]
               ) -> dict[str, Any]:
    """Time to the response and until the last order reached the engine, for a LIVE batch of `items` approved
    opportunities against an engine answering in 50 ms; what became of the orders."""
    runs = []
    with EngineStub(delay_s=0.05) as engine:
        log = scratch / f"decisions-{uuid.uuid4().hex[:6]}.jsonl"
        server = omni_mev("live batch", {"LIVE_TRADING": "true", "RUST_ENGINE_URL": engine.url,
                                         "AI_THRESHOLD": THRESHOLD, "AI_DECISION_LOG": str(log), **settings}).start()
        servers.append(server)
        try:
            for _ in range(repeats):
                ids = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(items)]
                first = len(engine.orders)
                started = time.time()
                status, answer = _post(server.url, {"items": [{"features": APPROVED, "opportunity_id": i}
                                                              for i in ids]})
                response_s = time.time() - started
                wanted = set(ids)
                deadline = time.monotonic() + 30
                while sum(_outcomes(log, wanted).values()) < items and time.monotonic() < deadline:
                    time.sleep(0.05)
                with engine.lock:
                    arrivals = [o["received_at"] for o in engine.orders[first:]]
                runs.append({
                    "status": status, "response_s": round(response_s, 3),
                    "last_order_s": round(max(arrivals) - started, 3) if arrivals else None,
                    "orders_at_engine": len(arrivals),
                    "in_response": dict(Counter(r["execution"]["status"] for r in answer["results"])),
                    "outcomes": dict(_outcomes(log, wanted)),
                })
        finally:
            server.stop()
    return {"items": items, "engine_latency_ms": 50, "settings": settings, "runs": runs,
            "median_response_s": statistics.median(r["response_s"] for r in runs),
            "median_last_order_s": statistics.median(r["last_order_s"] for r in runs if r["last_order_s"])}


class DispatchLoad:
    """Approved opportunities with fresh ids at a fixed rate, in threads, each on its own connection."""

    def __init__(self, url: str, rate_per_s: float, seconds: float, threads: int = 32) -> None:
        self.url, self.interval, self.deadline = url, 1.0 / rate_per_s, time.monotonic() + seconds
        self.sent, self.statuses = 0, Counter()
        self.lock = threading.Lock()
        self.next_at = time.monotonic()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while True:
            with self.lock:
                at, self.next_at = self.next_at, self.next_at + self.interval
            if at >= self.deadline:
                return
            time.sleep(max(0.0, at - time.monotonic()))
            try:
                status, body = _post(self.url, {"features": APPROVED, "opportunity_id": f"load-{uuid.uuid4().hex}"},
                                     timeout=10)
                outcome = body.get("execution", {}).get("status", "none") if status == 200 else str(status)
            except OSError as error:
                outcome = type(error).__name__
            with self.lock:
                self.sent += 1
                self.statuses[outcome] += 1

    def __enter__(self) -> DispatchLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for thread in self.threads:
            thread.join(30)


def predict_p99_with_engine(servers: list[Server], scratch: Path, engine_delay_s: float, duration_s: float,
                            rate_per_s: float) -> dict[str, Any]:
    """wrk's /predict (no dispatch) at 8 connections while approved opportunities are dispatched at a fixed
    rate to an engine answering after `engine_delay_s`."""
    with EngineStub(delay_s=engine_delay_s) as engine:
        server = omni_mev(f"engine {engine_delay_s}s", {
            "LIVE_TRADING": "true", "RUST_ENGINE_URL": engine.url, "AI_THRESHOLD": THRESHOLD,
            "AI_DISPATCH_MAX_AGE_S": "5", "AI_DECISION_LOG": str(scratch / f"p99-{uuid.uuid4().hex[:6]}.jsonl")},
        ).start()
        servers.append(server)
        try:
            body = json.dumps({"features": EXAMPLE})
            warm(server.url + "/predict", body, scratch)
            with DispatchLoad(server.url, rate_per_s, duration_s + (0.2 if SMOKE["on"] else 2)) as load:
                result = wrk(server.url + "/predict", body, 8, duration_s, scratch)
        finally:
            server.stop()
    return {"engine_delay_s": engine_delay_s, "dispatch_rate_per_s": rate_per_s, "dispatches": load.sent,
            "dispatch_statuses": dict(load.statuses), **result}


def measure(servers: list[Server], scratch: Path, duration_s: float, smoke: bool) -> dict[str, Any]:
    """Both measurements; the batch with the default settings and with a quarter of the senders."""
    items, repeats = (200, 1) if smoke else (1000, 3)
    batches = [live_batch(servers, scratch, items, repeats, settings)
               for settings in ({}, {"AI_DISPATCH_CONCURRENCY": "32"})]
    rate = 20.0 if smoke else 50.0
    p99 = {name: predict_p99_with_engine(servers, scratch, delay, duration_s, rate)
           for name, delay in (("fast", 0.001), ("slow", 1.0))}
    return {"batch": batches, "predict_p99": p99,
            "p99_ratio_slow_to_fast": p99["slow"]["p99_ms"] / p99["fast"]["p99_ms"]}
