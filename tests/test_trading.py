"""Trading modes against the real gunicorn (2 workers) and a real HTTP execution engine stand-in."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT, THRESHOLD
from tests.engine_stub import EngineStub
from tests.servers import Gunicorn, RedisServer, free_port, wait_until

def live_env(engine: EngineStub, **extra: str) -> dict[str, str]:
    return {"LIVE_TRADING": "true", "RUST_ENGINE_URL": engine.url, "AI_THRESHOLD": str(THRESHOLD), **extra}


def records(server: Gunicorn) -> list[dict]:
    lines = server.decision_log.read_bytes().splitlines() if server.decision_log.exists() else []
    return [json.loads(line) for line in lines]  # raises on a torn line


def decisions_report(server: Gunicorn) -> dict:
    """`omni-mev decisions --json` on the server's decision log."""
    summary = subprocess.run([sys.executable, "-m", "omni_mev.cli", "decisions", "--json", str(server.decision_log)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(summary.stdout)


def new_id() -> str:
    return f"opp-{uuid.uuid4().hex[:12]}"


def test_live_dispatches_positive_decisions_only(vectors):
    with EngineStub() as engine, Gunicorn(live_env(engine)) as server:
        sent = {}
        for decision in (True, False):
            for features in vectors[decision][:10]:
                opportunity = new_id()
                status, body, _ = server.post("/predict", {"features": features, "opportunity_id": opportunity})
                assert status == 200 and body["mode"] == "LIVE" and body["decision"] is decision
                sent[opportunity] = body
        positive = {i for i, body in sent.items() if body["decision"]}
        assert sorted(engine.ids()) == sorted(positive)
        for body in sent.values():
            if body["decision"]:
                assert body["execution"]["status"] == "dispatched" and body["execution"]["engine_status"] == 202
            else:
                assert "execution" not in body
        order = engine.orders[0]
        assert order["path"] == "/execute" and order["idempotency_key"] == order["opportunity_id"]
        assert set(order) >= {"features", "confidence", "threshold", "model_version"}
        # No id, or an explicit opt-out: never dispatched.
        _, body, _ = server.post("/predict", {"features": vectors[True][11]})
        assert body["execution"]["status"] == "skipped"
        _, body, _ = server.post("/predict", {"features": vectors[True][12], "opportunity_id": new_id(),
                                              "dispatch": False})
        assert body["execution"]["status"] == "skipped"
        assert len(engine.orders) == len(positive)
        logged = records(server)
        assert {r["opportunity_id"] for r in logged if r["event"] == "dispatch"} == positive
        assert {r["opportunity_id"]: r["status"] for r in logged if r["event"] == "outcome"} == dict.fromkeys(
            positive, "dispatched")


def test_simulation_never_contacts_the_engine_and_paper_trades(vectors):
    with EngineStub() as engine, Gunicorn({"RUST_ENGINE_URL": engine.url, "AI_THRESHOLD": str(THRESHOLD)}) as server:
        for features in vectors[True][:5] + vectors[False][:5]:
            _, body, _ = server.post("/predict", {"features": features, "opportunity_id": new_id()})
            assert body["mode"] == "SIMULATION"
            if body["decision"]:
                assert body["execution"]["status"] == "skipped" and "SIMULATION" in body["execution"]["reason"]
        wait_until(lambda: len([r for r in records(server) if r["event"] == "paper"]) == 5, 10,
                   what="paper records flushed")
        assert engine.connections == 0 and engine.orders == []


@pytest.mark.parametrize("with_redis", [False, True])
def test_same_id_concurrently_dispatched_once(vectors, with_redis):
    redis_server = RedisServer().start() if with_redis else None
    extra = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port)} if with_redis else {}
    try:
        with EngineStub() as engine, Gunicorn(live_env(engine, **extra)) as server:
            engine.mode, engine.delay_s = "slow", 0.05
            opportunity = new_id()
            payload = {"features": vectors[True][0], "opportunity_id": opportunity}
            with ThreadPoolExecutor(16) as pool:
                bodies = [r[1] for r in pool.map(lambda _: server.post("/predict", payload), range(32))]
            statuses = [b["execution"]["status"] for b in bodies]
            assert statuses.count("dispatched") == 1 and statuses.count("skipped") == 31
            assert engine.ids() == [opportunity]
            assert len({b["execution"].get("reason") for b in bodies if b["execution"]["status"] == "skipped"}) == 1
            if with_redis:
                assert redis_server.command("EXISTS", f"ai:dispatch:{opportunity}") == ":1"
    finally:
        if redis_server:
            redis_server.stop()


def test_two_instances_share_redis_for_idempotency(vectors):
    with RedisServer() as redis_server, EngineStub() as engine:
        extra = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port)}
        with Gunicorn(live_env(engine, **extra), workers=1) as first, \
                Gunicorn(live_env(engine, **extra), workers=1) as second:
            opportunity = new_id()
            payload = {"features": vectors[True][1], "opportunity_id": opportunity}
            a = first.post("/predict", payload)[1]["execution"]
            b = second.post("/predict", payload)[1]["execution"]
            assert sorted([a["status"], b["status"]]) == ["dispatched", "skipped"]
            assert "another instance" in (a if a["status"] == "skipped" else b)["reason"]
            assert engine.ids() == [opportunity]


def test_slow_engine_answered_queued_then_logged_once_without_retry(vectors):
    env = live_env(engine := EngineStub(), AI_DISPATCH_TIMEOUT_S="0.2", AI_DISPATCH_MAX_AGE_S="1.0")
    with engine, Gunicorn(env) as server:
        engine.mode, engine.delay_s = "slow", 3.0
        opportunity = new_id()
        started = time.monotonic()
        status, body, _ = server.post("/predict", {"features": vectors[True][2], "opportunity_id": opportunity})
        elapsed = time.monotonic() - started
        assert status == 200 and body["execution"]["status"] == "queued"
        assert elapsed < 1.0  # the 3 s engine did not hold the request
        # The sender waits for the answer until the order's deadline, then records an unknown outcome.
        outcome = wait_until(lambda: [r for r in records(server) if r["event"] == "outcome"], 10,
                             what="the outcome logged")
        assert [(r["opportunity_id"], r["status"]) for r in outcome] == [(opportunity, "failed")]
        assert "outcome unknown" in outcome[0]["reason"]
        assert engine.ids() == [opportunity]
        # The same id again is not re-sent either: its outcome is unknown.
        _, again, _ = server.post("/predict", {"features": vectors[True][2], "opportunity_id": opportunity})
        assert again["execution"]["status"] == "skipped"
        assert engine.ids() == [opportunity]


@pytest.mark.parametrize(("mode", "expected"), [("reject", "rejected"), ("fail", "failed")])
def test_engine_refusals_reported(vectors, mode, expected):
    with EngineStub() as engine, Gunicorn(live_env(engine), workers=1) as server:
        engine.mode = mode
        _, body, _ = server.post("/predict", {"features": vectors[True][3], "opportunity_id": new_id()})
        assert body["execution"]["status"] == expected


def test_engine_down_reported_as_failed(vectors):
    env = {"LIVE_TRADING": "true", "RUST_ENGINE_URL": f"http://127.0.0.1:{free_port()}", "AI_THRESHOLD": str(THRESHOLD)}
    with Gunicorn(env, workers=1) as server:  # nothing listens there: connection refused
        _, body, _ = server.post("/predict", {"features": vectors[True][4], "opportunity_id": new_id()})
        assert body["execution"]["status"] == "failed" and "unreachable" in body["execution"]["reason"]


def test_decision_log_complete_after_worker_kill(vectors):
    with EngineStub() as engine, Gunicorn(live_env(engine)) as server:
        engine.mode, engine.delay_s = "slow", 0.02
        stop = threading.Event()
        answered: list[str] = []

        def stream():
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline and len(answered) < 2000:
                opportunity = new_id()
                try:
                    server.post("/predict", {"features": vectors[True][5], "opportunity_id": opportunity})
                    answered.append(opportunity)
                except (OSError, http.client.HTTPException):  # the killed worker's request
                    pass

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(engine.orders) > 30, 20, what="dispatches flowing")
        for _ in range(2):
            victim = max(server.worker_pids())
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda victim=victim: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
                       20, what="worker respawned")
            server.wait_ready()
            mark = len(engine.orders)
            wait_until(lambda mark=mark: len(engine.orders) > mark + 20, 20, what="dispatches after the kill")
        stop.set()
        for thread in threads:
            thread.join(30)
        # A killed worker's open intent is taken over by a live worker: resent or expired, never left open.
        wait_until(lambda: "unknown" not in decisions_report(server)["live"]["outcomes"], 10,
                   what="open intents resolved")
        logged = records(server)  # every line parses: nothing torn
        dispatch_lines = [r["opportunity_id"] for r in logged if r["event"] == "dispatch"]
        assert len(dispatch_lines) == len(set(dispatch_lines))  # one line per dispatch
        # A worker killed between its commit and its line: the worker that took the intent over logged its order.
        taken_over = {r["opportunity_id"] for r in logged if r["event"] == "resend" and "features" in r}
        dispatch_lines += sorted(taken_over - set(dispatch_lines))
        assert set(engine.ids()) <= set(dispatch_lines)  # nothing reached the engine unlogged
        executed = engine.executions()
        assert len(executed) == len(set(executed)) and not engine.contract_violations  # each at most once
        report = decisions_report(server)
        assert report["unreadable_lines"] == 0 and report["live"]["count"] == len(dispatch_lines)
        assert sum(report["live"]["outcomes"].values()) == len(dispatch_lines)


def test_shadow_model_compared_and_logged(vectors, model_copy):
    import onnx

    shadow = model_copy.with_name("shadow.onnx")
    proto = onnx.load(str(model_copy))
    proto.metadata_props.append(onnx.StringStringEntryProto(key="candidate", value="b"))
    onnx.save(proto, str(shadow))
    env = {"AI_SHADOW_MODEL_PATH": str(shadow), "AI_THRESHOLD": str(THRESHOLD)}
    with Gunicorn(env) as server:
        for features in vectors[True][:4] + vectors[False][:4]:
            assert server.post("/predict", {"features": features, "opportunity_id": new_id()})[0] == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        agree = [line for line in text.splitlines() if line.startswith('ai_shadow_agreement_total{agree="true"}')]
        assert agree and float(agree[0].split()[-1]) == 8  # the same weights agree everywhere
        assert "ai_shadow_confidence_difference_bucket" in text
        wait_until(lambda: len([r for r in records(server) if r["event"] == "paper"]) == 4, 10, what="paper records")
        paper = [r for r in records(server) if r["event"] == "paper"]
        assert all(abs(r["shadow_confidence"] - r["confidence"]) < 1e-6 for r in paper)


def test_decisions_summary_command(tmp_path):
    log = tmp_path / "decisions.jsonl"
    base = {"threshold": 0.5, "model_version": "x", "mode": "LIVE",
            "features": {"profit_usd": 10.0, "input_amount_thousands": 2.0}}
    lines = [
        {**base, "event": "dispatch", "opportunity_id": "a", "confidence": 0.9, "shadow_confidence": 0.4},
        {"event": "outcome", "opportunity_id": "a", "status": "dispatched"},
        {**base, "event": "dispatch", "opportunity_id": "b", "confidence": 0.7},
        {**base, "mode": "SIMULATION", "event": "paper", "opportunity_id": "c", "confidence": 0.8},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"event": "disp')
    result = subprocess.run([sys.executable, "-m", "omni_mev.cli", "decisions", "--json", str(log)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["unreadable_lines"] == 1
    assert report["live"]["count"] == 2 and report["live"]["outcomes"] == {"dispatched": 1, "unknown": 1}
    assert report["live"]["volume_usd"] == 4000.0 and report["paper"]["count"] == 1
    assert report["shadow"] == {"compared": 1, "agreement_rate": 0.0, "mean_abs_difference": 0.5}
    text = subprocess.run([sys.executable, "-m", "omni_mev.cli", "decisions", str(log)], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert "live: 2 trades" in text and "paper: 1 trades" in text
