"""A LIVE service's history after weeks of trading: N past dispatches in its decision log and in its outbox table.

Used by the benchmark of start-up and reload time by history size
(bench/money_path.py) and by the test that a grown history costs a start and
a reload nothing (tests/test_grown_history.py). Every intent has ended
(dispatched, as most do), the way a service that stopped cleanly leaves them.
"""
from __future__ import annotations

import time
from pathlib import Path

import orjson

from omni_mev.features import FEATURE_NAMES
from omni_mev.trading.intent_store import IntentStore
from omni_mev.trading.migration import FACT

FEATURES = dict(zip(FEATURE_NAMES, [10.5, 1.012, 3.0, 0.35, 0.87, 0.5, 2.0, 1.0]))
CHUNK = 20_000


def write_history(decision_log: Path, outbox_url: str, dispatches: int, span_s: float = 14 * 86_400.0) -> None:
    """`dispatches` past dispatches, spread over `span_s` seconds up to now: a `dispatch` and an `outcome` line
    each in the decision log, and one ended row each in the outbox table (which then needs no import)."""
    store = IntentStore(outbox_url)
    start = time.time() - span_s
    step = span_s / max(1, dispatches)
    decision_log.parent.mkdir(parents=True, exist_ok=True)
    with open(decision_log, "ab") as stream:
        for first in range(0, dispatches, CHUNK):
            lines, rows = [], []
            for i in range(first, min(dispatches, first + CHUNK)):
                ts = start + i * step
                opportunity_id = f"past-{i:08d}"
                order = {"opportunity_id": opportunity_id, "features": FEATURES, "confidence": 0.91,
                         "threshold": 0.78, "model_version": "bb504f0433ef", "expires_at": ts + 1.0}
                lines.append(orjson.dumps({"ts": ts, "mode": "LIVE", **order, "pid": 1, "claim": "host",
                                           "event": "dispatch", "owner": "past:1:1"}))
                lines.append(orjson.dumps({"event": "outcome", "ts": ts + 0.004, "opportunity_id": opportunity_id,
                                           "status": "dispatched", "reason": "accepted by the execution engine",
                                           "latency_ms": 3.9, "engine_status": 202, "known": True, "pid": 1}))
                rows.append({"opportunity_id": opportunity_id, "instance": "past", "owner": "past:1:1",
                             "logged_at": ts, "expires_at": ts + 1.0, "order_body": orjson.dumps(order).decode(),
                             "checks": 0, "status": "dispatched", "known": True,
                             "reason": "accepted by the execution engine", "engine_status": 202,
                             "ended_at": ts + 0.004})
            stream.write(b"\n".join(lines) + b"\n")
            store.import_rows(rows)
    store.record_fact(FACT, f"{dispatches} intents written by bench.history")
    store.engine.dispose()
