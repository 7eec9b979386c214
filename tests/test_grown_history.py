"""A service that has traded for weeks: starting and reloading cost what they cost on day one, the decision log is
rotated without losing a line, and a log written by an earlier version is imported once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.history import write_history
from omni_mev.trading.intent_store import IntentStore
from omni_mev.trading.migration import FACT
from tests.conftest import ROOT
from tests.engine_stub import EngineStub
from tests.servers import Gunicorn, wait_until
from tests.test_outbox import batch, decision_records, live
from tests.test_reconciliation import books, reconciled

HISTORY = 300_000


def outbox_url(server: Gunicorn) -> str:
    return f"sqlite:///{server.state_dir / 'outbox.db'}"


def order(server: Gunicorn, vector: list[float], opportunity_id: str) -> tuple[dict, float]:
    """One approved order: its execution and how long the answer took (s)."""
    started = time.monotonic()
    status, body, _ = server.post("/predict", {"features": vector, "opportunity_id": opportunity_id})
    assert status == 200, body
    return body["execution"], time.monotonic() - started


def test_300000_past_dispatches_cost_a_start_and_a_reload_nothing(vectors):
    """The first approved order after a start, and orders sent from the moment of a SIGHUP until the new workers
    serve, are dispatched and answered within 2 s (against 8.4 s and `expired` when every worker read the log)."""
    with EngineStub() as engine:
        server = Gunicorn(live(engine.url))
        write_history(server.decision_log, outbox_url(server), HISTORY)
        assert server.decision_log.stat().st_size > 100_000_000
        with server:
            execution, took = order(server, vectors[True][0], "first-after-start")
            assert execution["status"] == "dispatched" and took < 2.0
            old_workers = server.worker_pids()
            server.signal(signal.SIGHUP)
            answers = []
            while server.worker_pids() & old_workers or len(answers) < 10:
                answers.append(order(server, vectors[True][len(answers) % 30], f"during-reload-{len(answers)}"))
                assert len(answers) < 200, "the reload did not finish"
            assert [a for a in answers if a[0]["status"] != "dispatched"] == []
            assert max(took for _, took in answers) < 2.0
            assert engine.executions() == ["first-after-start"] + [f"during-reload-{i}" for i in range(len(answers))]
            # The history is still the service's memory of ids: an id dispatched two weeks ago stays claimed.
            execution, _ = order(server, vectors[True][1], "past-00299999")
            assert execution["status"] == "skipped" and "already dispatched" in execution["reason"]


def test_an_earlier_versions_decision_log_is_imported_once(vectors, tmp_path):
    """A log with 2,000 ended dispatches and 6 left open by a crash (3 of which the engine executed): on the first
    start, the ended ids stay claimed and the open intents are reconciled with what the engine did; the second
    start reads nothing."""
    with EngineStub() as engine:
        env = live(engine.url, AI_RECONCILE_AFTER_S="1")
        server = Gunicorn(env, workers=1)
        now = time.time()
        lines = []
        for i in range(2006):
            opportunity_id = f"old-{i}"
            ts = now - 3600 + i
            lines.append({"ts": ts, "mode": "LIVE", "opportunity_id": opportunity_id, "confidence": 0.9,
                          "threshold": 0.78, "model_version": "bb504f0433ef", "features": {}, "pid": 1,
                          "cross_instance_claim": "unavailable", "expires_at": ts + 1, "owner": "gone:1:1",
                          "event": "dispatch"})
            if i < 2000:
                lines.append({"event": "outcome", "ts": ts + 0.01, "opportunity_id": opportunity_id,
                              "status": "dispatched", "reason": "accepted", "engine_status": 202, "pid": 1})
            elif i < 2003:  # sent before the crash: the engine executed them
                engine.answers[opportunity_id] = 202
                engine.executed.append(opportunity_id)
        server.decision_log.write_text("".join(json.dumps(line) + "\n" for line in lines))
        opened = [f"old-{i}" for i in range(2000, 2006)]
        try:
            server.start()
            wait_until(lambda: set(reconciled(server.decision_log)) == set(opened), 30, what="open intents reconciled")
            verdicts = reconciled(server.decision_log)
            assert verdicts == {**{f"old-{i}": "executed" for i in range(2000, 2003)},
                                **{f"old-{i}": "not_executed" for i in range(2003, 2006)}}
            assert order(server, vectors[True][0], "old-17")[0]["status"] == "skipped"
            assert "intents imported from the decision log" in server.output()
            server.stop()
            assert IntentStore(outbox_url(server)).fact(FACT).startswith("2006 intents")
            server.start()
            assert order(server, vectors[True][0], "new-1")[0]["status"] == "dispatched"
            assert server.output().count("intents imported from the decision log") == 1
        finally:
            server.__exit__(None, None, None)
        assert engine.executions().count("old-2000") == 1  # reconciled, never executed again


def test_the_decision_log_rotates_by_size_without_losing_a_line(vectors):
    """AI_DECISION_LOG_MAX_BYTES=16 KiB under 120 dispatches from two workers: the log is rotated to .1, .2, ...;
    every line of every file is a whole record, and every intent's dispatch and outcome lines are there."""
    with EngineStub() as engine:
        env = live(engine.url, AI_DECISION_LOG_MAX_BYTES="16384", AI_DECISION_LOG_BACKUPS="50")
        with Gunicorn(env) as server:
            ids = []
            for round_ in range(4):
                round_ids, body = batch(vectors, f"rot{round_}", 30)
                ids += round_ids
                assert server.post("/predict/batch", body, timeout=10)[0] == 200
            wait_until(lambda: len(_events(server.state_dir, "outcome")) == len(ids), 20, what="every outcome logged")
            files = sorted(server.state_dir.glob("decisions.jsonl*"))
            assert len(files) > 3 and all(f.stat().st_size <= 16384 + 40_000 for f in files)
            assert sorted(_events(server.state_dir, "dispatch")) == sorted(ids)
            assert sorted(_events(server.state_dir, "outcome")) == sorted(ids)


def _events(directory: Path, event: str) -> list[str]:
    """The ids of every `event` line in the log and its rotated files (each line must parse)."""
    found = []
    for path in directory.glob("decisions.jsonl*"):
        for record in decision_records(path):
            if record["event"] == event:
                found.append(record["opportunity_id"])
    return found


@pytest.mark.skipif(shutil.which("logrotate") is None and not os.path.exists("/usr/sbin/logrotate"),
                    reason="logrotate is not installed (make test installs it)")
def test_the_shipped_logrotate_file_rotates_a_live_log_without_losing_a_line(vectors, tmp_path):
    """systemd/omni-mev.logrotate, pointed at the test's log, forced while dispatches go on: later lines go to the
    new file, and none is lost or torn."""
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    with EngineStub() as engine, Gunicorn(live(engine.url)) as server:
        config = (ROOT / "systemd" / "omni-mev.logrotate").read_text()
        assert "/var/lib/omni-mev/decisions.jsonl {" in config
        (tmp_path / "omni-mev").write_text(config.replace("/var/lib/omni-mev/decisions.jsonl", str(server.decision_log)))
        ids, body = batch(vectors, "before", 20)
        assert server.post("/predict/batch", body, timeout=10)[0] == 200
        wait_until(lambda: len(_events(server.state_dir, "outcome")) == 20, 20, what="outcomes logged")
        subprocess.run([logrotate, "-f", "-s", str(tmp_path / "state"), str(tmp_path / "omni-mev")], check=True)
        rotated = [p for p in server.state_dir.glob("decisions.jsonl-*")]
        assert len(rotated) == 1 and not server.decision_log.exists()
        more, body = batch(vectors, "after", 20)
        assert server.post("/predict/batch", body, timeout=10)[0] == 200
        wait_until(lambda: len(_events(server.state_dir, "outcome")) == 40, 20, what="outcomes logged")
        assert sorted(_events(server.state_dir, "dispatch")) == sorted(ids + more)
        assert {r["opportunity_id"] for r in decision_records(server.decision_log)} == set(more)
        assert set(books(server.decision_log)) == set(more)
