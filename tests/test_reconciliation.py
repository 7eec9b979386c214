"""Reconciliation by key, through the real gunicorn and an engine stub that keeps the engine contract.

An order whose engine answer never came (the engine crashed after executing,
answered after the deadline, or died before acting) ends with an unknown
outcome; AI_RECONCILE_AFTER_S past its deadline the service sends it again
with the same Idempotency-Key, and the books end with what the engine did:
executed once, or never.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from omni_mev.trading.outbox import TERMINAL_STATUSES
from tests.conftest import ROOT
from tests.engine_stub import EngineStub
from tests.servers import Gunicorn, wait_until
from tests.test_outbox import batch, decision_records, intents, live

FAST = {"AI_RECONCILE_AFTER_S": "1", "AI_DISPATCH_MAX_AGE_S": "1", "AI_BATCH_DISPATCH_WAIT_S": "0.3"}


def books(log) -> dict[str, str]:
    """Each intent's final status as the decision log ends it: a reconciliation's verdict over an unknown outcome."""
    final: dict[str, str] = {}
    for record in decision_records(log):
        if record["event"] == "outcome":
            assert record["opportunity_id"] not in final, "two outcomes for one intent"
            final[record["opportunity_id"]] = record["status"]
        elif record["event"] == "reconciled":
            final[record["opportunity_id"]] = record["status"]
    return final


def reconciled(log) -> dict[str, str]:
    return {r["opportunity_id"]: r["verdict"] for r in decision_records(log) if r["event"] == "reconciled"}


def unknown(log) -> set[str]:
    return {r["opportunity_id"] for r in decision_records(log) if r["event"] == "outcome" and r["known"] is False}


def report(server: Gunicorn) -> dict:
    done = subprocess.run([sys.executable, "-m", "omni_mev.cli", "decisions", "--json", str(server.decision_log)],
                          cwd=ROOT, capture_output=True, text=True, check=True, env=server.env)
    return json.loads(done.stdout)


@pytest.mark.parametrize("mode", ["crash", "lost"])
def test_an_unanswered_order_is_reconciled_with_what_the_engine_did(vectors, mode):
    """crash: the engine executes each order, then dies before answering (as 15 of 20 did in the field); lost: it
    dies before acting. Either way every outcome is first unknown, then reconciled by key: executed once, or
    never executed; never a second execution."""
    with EngineStub(mode=mode) as engine, Gunicorn(live(engine.url, **FAST)) as server:
        ids, body = batch(vectors, mode, 20)
        status, answer, _ = server.post("/predict/batch", body, timeout=10)
        assert status == 200
        assert {r["execution"]["status"] for r in answer["results"]} <= {"failed", "queued"}
        wait_until(lambda: set(reconciled(server.decision_log)) == set(ids), 30, what="every order reconciled")
        assert unknown(server.decision_log) == set(ids)
        verdicts = reconciled(server.decision_log)
        executed = Counter(engine.executions())
        if mode == "crash":
            assert set(verdicts.values()) == {"executed"} and set(books(server.decision_log).values()) == {"dispatched"}
            assert executed == Counter(ids)  # once each: the reconciliation replayed, never executed again
        else:
            assert set(verdicts.values()) == {"not_executed"} and not executed
        assert Counter(engine.ids()) == Counter(ids * 2)  # sent once, asked once by key
        summary = report(server)
        assert summary["live"]["reconciled"] == {verdicts[ids[0]]: 20}
        assert summary["outbox"]["reconciled"] == {verdicts[ids[0]]: 20} and summary["outbox"]["unreconciled"] == 0
        metrics = server.get("/status")[1]
        assert metrics["outbox"]["claims"] == "host" and metrics["outbox"]["problem"] is None


def test_answers_after_the_deadline_are_reconciled_as_executed(vectors):
    """A 0.6 s engine and orders that expire after 0.3 s: the engine executes each, the service stops waiting
    first. The books end `dispatched` for every one the engine executed."""
    with EngineStub(delay_s=0.6) as engine:
        with Gunicorn(live(engine.url, **{**FAST, "AI_DISPATCH_MAX_AGE_S": "0.3"}), workers=1) as server:
            ids, body = batch(vectors, "late", 30)
            assert server.post("/predict/batch", body, timeout=10)[0] == 200
            wait_until(lambda: set(books(server.decision_log)) == set(ids)
                       and unknown(server.decision_log) <= set(reconciled(server.decision_log)), 40,
                       what="every unknown outcome reconciled")
            final = books(server.decision_log)
            executed = Counter(engine.executions())
            assert max(executed.values()) == 1
            for opportunity in ids:  # the books agree with the engine, order by order
                assert (final[opportunity] == "dispatched") == (executed[opportunity] == 1), opportunity
            assert set(final.values()) <= set(TERMINAL_STATUSES) | {"not_executed"}
            assert sorted(intents(server.decision_log)) == sorted(ids)


def test_an_engine_that_stays_down_leaves_the_order_listed_unreconciled(vectors):
    """The engine executes an order, dies before answering, and stays down: the outcome stays unknown, the
    service keeps asking, `omni-mev decisions` lists the order, the gauge counts it, nothing is resent as new."""
    with EngineStub(mode="crash") as engine, Gunicorn(live(engine.url, **FAST), workers=1) as server:
        answer = server.post("/predict", {"features": vectors[True][0], "opportunity_id": "silent-1"})[1]
        assert answer["execution"]["status"] == "failed" and "unknown" in answer["execution"]["reason"]
        engine.__exit__()  # down for good: every ask by key finds no engine

        def listed() -> bool:
            return [row["opportunity_id"] for row in report(server)["outbox"]["unreconciled_intents"]] == ["silent-1"]

        wait_until(listed, 30, what="the order listed unreconciled")
        assert reconciled(server.decision_log) == {} and engine.executions() == ["silent-1"]
        summary = report(server)
        assert summary["outbox"]["unreconciled"] == 1 and summary["live"]["awaiting_reconciliation"] == ["silent-1"]
        wait_until(lambda: "ai_dispatch_unreconciled 1.0" in metrics_text(server), 20, what="the gauge at 1")


def metrics_text(server: Gunicorn) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()
