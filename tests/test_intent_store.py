"""The outbox's table on its own (SQLite): claims, one outcome per intent, checks taken once, the purge."""
from __future__ import annotations

import time

import pytest

from omni_mev.trading.intent_store import Ending, Intent, IntentStore


@pytest.fixture
def store(tmp_path) -> IntentStore:
    return IntentStore(f"sqlite:///{tmp_path / 'outbox.db'}")


def intent(opportunity_id: str, age_s: float = 0.0) -> Intent:
    now = time.time() - age_s
    return Intent(opportunity_id, now, now + 1, {"opportunity_id": opportunity_id})


def test_the_first_claim_of_an_id_wins_and_names_its_holder(store):
    assert store.claim([intent("a"), intent("b")], "host-1", "p1") == {"a": None, "b": None}
    assert store.claim([intent("a"), intent("c")], "host-2", "p2") == {"a": "host-1", "c": None}


def test_a_second_claim_store_that_refuses_leaves_nothing_claimed(store):
    answer = store.claim([intent("a"), intent("b")], "host-1", "p1", confirm=lambda ids: {"a"})
    assert answer == {"a": None, "b": ""}
    assert store.claim([intent("b")], "host-1", "p1") == {"b": None}  # b was removed again, so free


def test_an_intent_gets_one_outcome_and_an_unknown_one_is_due_for_a_check(store):
    store.claim([intent("a"), intent("b")], "h", "p")
    first = store.finish([Ending("a", "failed", False, "no answer"), Ending("b", "dispatched", True, "ok", 202)], 5.0)
    assert first["a"].status == "failed" and first["b"].engine_status == 202
    again = store.finish([Ending("a", "dispatched", True, "late")], 5.0)
    assert again["a"] == Ending("a", "failed", False, "no answer")  # the first stands
    assert store.due_checks(time.time()) == []  # due 5 s after the deadline
    (due,) = store.due_checks(time.time() + 7)
    assert due.opportunity_id == "a" and due.order == {"opportunity_id": "a"}


def test_a_check_is_taken_by_one_worker_and_a_verdict_recorded_once(store):
    store.claim([intent("a")], "h", "p")
    store.finish([Ending("a", "failed", False, "no answer")], 0.0)
    (due,) = store.due_checks(time.time() + 2)
    assert store.begin_check(due, time.time() + 60) and not store.begin_check(due, time.time() + 60)
    assert [row["opportunity_id"] for row in store.unreconciled()] == ["a"]  # asked once, no verdict yet
    assert store.settle("a", "executed", 202) and not store.settle("a", "not_executed", 410)
    assert store.unreconciled() == [] and store.counts()["reconciled"] == {"executed": 1}


def test_the_purge_removes_settled_intents_only(store):
    for name in ("old-settled", "old-unknown", "old-open", "new-settled"):
        store.claim([intent(name, age_s=7200 if name.startswith("old") else 0)], "h", "p")
    store.finish([Ending("old-settled", "dispatched", True, "ok"), Ending("old-unknown", "failed", False, "?"),
                  Ending("new-settled", "dispatched", True, "ok")], 5.0)
    assert store.purge(time.time() - 3600, chunk=1, pause_s=0) == 1
    left = store.counts()["outcomes"]
    assert left == {"dispatched": 1, "failed": 1, "open": 1}
    assert store.claim([intent("old-settled")], "h", "p") == {"old-settled": None}  # its id is free again
