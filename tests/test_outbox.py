"""The money path under faults, through the real gunicorn and a real HTTP engine that keeps the engine contract.

For every approved opportunity: exactly one execution by the engine or a
recorded terminal state, one outcome line per intent, never two executions,
never a 5xx after an intent was logged.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import pytest

from omni_mev.trading.engine import idempotency_key
from omni_mev.trading.outbox import TERMINAL_STATUSES
from tests.conftest import ROOT, THRESHOLD
from tests.engine_stub import EngineStub
from tests.servers import Gunicorn, free_port, wait_until

# Ids no test elsewhere uses: non-Latin-1, line breaks, controls, the escape character itself, spaces, quotes.
ODD_IDS = ["x-€", "套利-1", "🦄🚀", "a\nb", "tab\there", "bell\x07", "50%", "a b", 'quo"te', "ü" * 128]
TERMINAL = set(TERMINAL_STATUSES)


def live(engine_url: str, **extra: str) -> dict[str, str]:
    return {"LIVE_TRADING": "true", "RUST_ENGINE_URL": engine_url, "AI_THRESHOLD": str(THRESHOLD), **extra}


def decision_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def outcomes(path: Path) -> dict[str, list[str]]:
    """Outcome statuses by id: each list must have exactly one entry."""
    by_id: dict[str, list[str]] = {}
    for record in decision_records(path):
        if record["event"] == "outcome":
            by_id.setdefault(record["opportunity_id"], []).append(record["status"])
    return by_id


def intents(path: Path) -> list[str]:
    """Each intent's id once: its `dispatch` line, or (its worker killed between its commit and that line) the
    `resend` line, with the order, of the worker that took it over."""
    records = decision_records(path)
    logged = [r["opportunity_id"] for r in records if r["event"] == "dispatch"]
    taken_over = {r["opportunity_id"] for r in records if r["event"] == "resend" and "features" in r}
    return logged + sorted(taken_over - set(logged))


def all_ended(path: Path) -> bool:
    ended = outcomes(path)
    return all(opportunity in ended for opportunity in intents(path))


def batch(vectors, prefix: str, n: int) -> tuple[list[str], dict]:
    ids = [f"{prefix}-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    items = [{"features": vectors[True][i % len(vectors[True])], "opportunity_id": ids[i]} for i in range(n)]
    return ids, {"items": items}


def assert_money_invariants(engine: EngineStub, log: Path, approved: list[str]) -> dict[str, str]:
    """The invariants of the issue; returns each approved id's one terminal status."""
    ended = outcomes(log)
    assert sorted(intents(log)) == sorted(approved)  # one intent per approved id
    assert {i: len(s) for i, s in ended.items() if len(s) != 1} == {}  # exactly one outcome each
    final = {i: ended[i][0] for i in approved}
    assert set(final.values()) <= TERMINAL
    executed = Counter(engine.executions())
    assert max(executed.values(), default=1) == 1  # never executed twice
    # Executed by the engine exactly when the service recorded it dispatched, or it ended without a known answer.
    for opportunity, status in final.items():
        if status == "dispatched":
            assert executed[opportunity] == 1
        elif status == "rejected":
            assert executed[opportunity] == 0
    assert set(engine.ids()) <= set(approved) and not engine.contract_violations
    return final


@pytest.mark.parametrize("opportunity_id", ODD_IDS)
def test_any_json_string_id_is_dispatched_with_an_encoded_key(vectors, opportunity_id):
    with EngineStub() as engine, Gunicorn(live(engine.url), workers=1) as server:
        status, body, _ = server.post("/predict", {"features": vectors[True][0], "opportunity_id": opportunity_id})
        assert status == 200 and body["execution"]["status"] == "dispatched"
        assert engine.executions() == [opportunity_id]
        key = engine.orders[0]["idempotency_key"]
        assert key == idempotency_key(opportunity_id) and urllib.parse.unquote(key) == opportunity_id
        assert outcomes(server.decision_log) == {opportunity_id: ["dispatched"]}
        # The id is used once: a resend is a duplicate, and the engine hears nothing more.
        _, again, _ = server.post("/predict", {"features": vectors[True][0], "opportunity_id": opportunity_id})
        assert again["execution"]["status"] == "skipped" and len(engine.orders) == 1


def test_an_id_with_nul_is_refused_before_anything_is_logged(vectors):
    """NUL is the one character no supported database stores: 422, nothing logged, nothing sent."""
    with EngineStub() as engine, Gunicorn(live(engine.url), workers=1) as server:
        status, body, _ = server.post("/predict", {"features": vectors[True][0], "opportunity_id": "nul\x00id"})
        assert status == 422 and "NUL" in body["fields"]["opportunity_id"][0]
        status, body, _ = server.post("/predict/batch", {"items": [
            {"features": vectors[True][0], "opportunity_id": "ok-1"},
            {"features": vectors[True][1], "opportunity_id": "\x00"}]})
        assert status == 422 and list(body["fields"]) == ["items.1.opportunity_id"]
        assert intents(server.decision_log) == [] and engine.orders == []


def test_batch_with_odd_ids_dispatches_every_item(vectors):
    with EngineStub() as engine, Gunicorn(live(engine.url), workers=1) as server:
        ids = ["b1", "b€", "b3", "b\n4"]
        items = [{"features": vectors[True][i], "opportunity_id": opportunity} for i, opportunity in enumerate(ids)]
        status, body, _ = server.post("/predict/batch", {"items": items})
        assert status == 200
        assert [r["execution"]["status"] for r in body["results"]] == ["dispatched"] * 4
        assert sorted(engine.executions()) == sorted(ids)
        assert_money_invariants(engine, server.decision_log, ids)


def test_batch_answers_within_its_wait_and_finishes_in_the_background(vectors):
    """80 approved items against a 0.3 s engine, 8 at a time: the response comes at the batch's wait with
    each item's state, and every order is then sent and logged once."""
    settings = {"AI_DISPATCH_CONCURRENCY": "8", "AI_BATCH_DISPATCH_WAIT_S": "0.5", "AI_DISPATCH_MAX_AGE_S": "60"}
    with EngineStub(delay_s=0.3) as engine, Gunicorn(live(engine.url, **settings), workers=1) as server:
        ids, body = batch(vectors, "bg", 80)
        status, answer, _ = server.post("/predict/batch", body, timeout=10)
        assert status == 200
        statuses = Counter(r["execution"]["status"] for r in answer["results"])
        assert set(statuses) <= {"dispatched", "queued"} and statuses["queued"] > 0
        queued = next(r["execution"] for r in answer["results"] if r["execution"]["status"] == "queued")
        assert "Idempotency-Key" in queued["reason"]
        # Meanwhile the worker scores other requests.
        assert server.post("/predict", {"features": vectors[False][0]})[0] == 200
        wait_until(lambda: all_ended(server.decision_log), 30, what="every intent ended")
        final = assert_money_invariants(engine, server.decision_log, ids)
        assert set(final.values()) == {"dispatched"} and sorted(engine.executions()) == sorted(ids)


def test_orders_that_wait_past_their_deadline_expire_unsent(vectors):
    """A short max age and a slow engine: the orders still waiting for a sender at their deadline are never
    sent and end expired."""
    settings = {"AI_DISPATCH_CONCURRENCY": "2", "AI_BATCH_DISPATCH_WAIT_S": "0.2", "AI_DISPATCH_MAX_AGE_S": "0.5"}
    with EngineStub(delay_s=0.2) as engine, Gunicorn(live(engine.url, **settings), workers=1) as server:
        ids, body = batch(vectors, "stale", 40)
        assert server.post("/predict/batch", body, timeout=10)[0] == 200
        wait_until(lambda: all_ended(server.decision_log), 30, what="every intent ended")
        final = assert_money_invariants(engine, server.decision_log, ids)
        expired = {i for i, status in final.items() if status == "expired"}
        assert expired and not expired & set(engine.ids())  # expired orders never reached the engine
        assert len(engine.ids()) < len(ids)


@pytest.mark.parametrize("fault", ["slow", "down", "error", "crash"])
def test_engine_faults_end_every_intent_once(vectors, fault):
    """The engine slow (1 s), down, answering 500, or dying before its answer: singles and a batch."""
    mode = {"slow": "ok", "down": "ok", "error": "fail", "crash": "crash"}[fault]
    with EngineStub(mode=mode, delay_s=1.0 if fault == "slow" else 0.0) as engine:
        url = f"http://127.0.0.1:{free_port()}" if fault == "down" else engine.url
        env = live(url, AI_DISPATCH_MAX_AGE_S="3", AI_BATCH_DISPATCH_WAIT_S="0.3")
        with Gunicorn(env) as server:
            singles = [f"{fault}-single-{i}-é" for i in range(4)]
            for i, opportunity in enumerate(singles):
                status, body, _ = server.post("/predict", {"features": vectors[True][i], "opportunity_id": opportunity})
                assert status == 200 and body["execution"]["status"] in TERMINAL | {"queued"}
            ids, body = batch(vectors, fault, 30)
            status, answer, _ = server.post("/predict/batch", body, timeout=10)
            assert status == 200
            assert {r["execution"]["status"] for r in answer["results"]} <= TERMINAL | {"queued"}
            wait_until(lambda: all_ended(server.decision_log), 30, what="every intent ended")
            final = assert_money_invariants(engine, server.decision_log, singles + ids)
    expected = {"slow": {"dispatched"}, "down": {"failed"}, "error": {"failed"}, "crash": {"failed"}}[fault]
    assert set(final.values()) == expected
    if fault == "down":
        assert engine.orders == []
    else:  # one call per order: nothing is retried
        assert sorted(engine.ids()) == sorted(singles + ids)


@pytest.mark.parametrize("max_age", ["60", "0.5"])
def test_service_killed_mid_batch_then_restarted(vectors, tmp_path, max_age):
    """SIGKILL to the whole service while a LIVE batch is being sent; on restart the open intents are resent
    with the same key (young) or recorded expired (old): one outcome each, no execution twice."""
    log = tmp_path / "decisions.jsonl"
    with EngineStub(delay_s=0.2) as engine:
        env = live(engine.url, AI_DECISION_LOG=str(log), AI_DISPATCH_MAX_AGE_S=max_age,
                   AI_DISPATCH_CONCURRENCY="4", AI_BATCH_DISPATCH_WAIT_S="5")
        ids, body = batch(vectors, f"kill{max_age}", 60)
        with Gunicorn(env, workers=1) as server:
            client = subprocess.Popen([sys.executable, "-c", (
                "import json, sys, urllib.request; "
                f"urllib.request.urlopen(urllib.request.Request({server.url + '/predict/batch'!r}, "
                "data=sys.stdin.buffer.read(), headers={'Content-Type': 'application/json'}), timeout=30)")],
                stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
            client.stdin.write(json.dumps(body).encode())
            client.stdin.close()
            wait_until(lambda: len(engine.orders) >= 8, 20, what="the batch being sent")
            os.killpg(server.pid, signal.SIGKILL)
            server.proc.wait(10)
            client.wait(30)
            sent_before = len(engine.orders)
        assert not all_ended(log)  # the kill left intents open
        with Gunicorn(env, workers=2):
            wait_until(lambda: all_ended(log), 30, what="open intents resolved after the restart")
            final = assert_money_invariants(engine, log, ids)
            report = json.loads(subprocess.run([sys.executable, "-m", "omni_mev.cli", "decisions", "--json", str(log)],
                                               cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert "unknown" not in report["live"]["outcomes"] and sum(report["live"]["outcomes"].values()) == len(ids)
    if max_age == "60":
        assert set(final.values()) == {"dispatched"} and sorted(engine.executions()) == sorted(ids)
        assert len(engine.ids()) > sent_before  # the restart sent what was left
    else:
        assert "expired" in final.values()
        assert len(engine.ids()) == sent_before  # nothing stale was sent after the restart


def test_a_request_older_than_the_order_deadline_is_never_sent(vectors, tmp_path):
    """X-Request-Start (nginx's stamp): an order's deadline counts from when the request reached the proxy. A
    request replayed or queued past AI_DISPATCH_MAX_AGE_S answers `expired`, with no claim, no intent and no
    order; a fresh stamp, or one in the future (a client's own), dispatches with the deadline it allows."""
    import time

    from tests.servers import Nginx, http

    with EngineStub() as engine, Gunicorn(live(engine.url), workers=1) as server:
        vector = vectors[True][0]
        old = {"X-Request-Start": f"t={time.time() - 5:.3f}"}
        for path, body in (("/predict", {"features": vector, "opportunity_id": "late-1"}),
                           ("/predict/batch", {"items": [{"features": vector, "opportunity_id": "late-2"}]})):
            status, answer, _ = server.post(path, body, headers=old)
            execution = answer["execution"] if path == "/predict" else answer["results"][0]["execution"]
            assert status == 200 and execution["status"] == "expired" and "never sent" in execution["reason"]
        future = {"X-Request-Start": f"t={time.time() + 3600:.3f}"}
        status, answer, _ = server.post("/predict", {"features": vector, "opportunity_id": "fresh-1"}, headers=future)
        assert answer["execution"]["status"] == "dispatched"
        (intent,) = [r for r in decision_records(server.decision_log) if r["event"] == "dispatch"]
        assert intent["opportunity_id"] == "fresh-1" and intent["expires_at"] <= time.time() + 1.0
        assert engine.executions() == ["fresh-1"]
        # Through the shipped nginx site, which stamps every request with its own time, whatever a client sent.
        with Nginx(tmp_path, [server.port]) as proxy:
            status, answer, _ = http("POST", proxy.https + "/predict", {"features": vector, "opportunity_id": "via"},
                                     headers=old, context=proxy.ssl_context())
            assert status == 200 and answer["execution"]["status"] == "dispatched"
        assert engine.executions() == ["fresh-1", "via"]
