"""The one-time import of a decision log written before the outbox had a table.

Earlier versions kept the dispatch outbox in the decision log itself, and
every worker read the whole log at start-up. The first start of this version
reads it once, under the outbox's host lock, and inserts the intents the
table must know: those still open (they are then taken over or reconciled as
any other) and those of the last AI_DISPATCH_DEDUPE_TTL_S (their ids stay
claimed). A fact in the table records that it was done, so no later start
reads the log again.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from omni_mev.trading.decision_log import DISPATCH_EVENT, OUTCOME_EVENT
from omni_mev.trading.intent_store import ORDER_FIELDS, IntentStore

log = logging.getLogger(__name__)
FACT = "decision_log_imported"
_DISPATCH = b'"dispatch"'
_OUTCOME = b'"outcome"'


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The dispatch and outcome records of the log (paper records, the bulk, are skipped unparsed)."""
    with open(path, "rb") as stream:
        for line in stream:
            if _DISPATCH not in line and _OUTCOME not in line:
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if (isinstance(record, dict) and record.get("event") in (DISPATCH_EVENT, OUTCOME_EVENT)
                    and isinstance(record.get("opportunity_id"), str)):
                yield record


def import_earlier_log(store: IntentStore, path: Path, claims_ttl_s: float) -> int:
    """Import the intents of an earlier version's decision log, once per outbox; how many were inserted."""
    if store.fact(FACT) is not None:
        return 0
    with store.exclusive():
        if store.fact(FACT) is not None:  # another process of the host did it while this one waited
            return 0
        started = time.monotonic()
        horizon = time.time() - claims_ttl_s
        intents: dict[str, dict[str, Any]] = {}
        ended: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for record in _records(path):
                opportunity_id = record["opportunity_id"]
                if record.get("event") == DISPATCH_EVENT:
                    intents[opportunity_id] = record
                else:
                    ended[opportunity_id] = record
        rows = [_row(record, ended.get(opportunity_id)) for opportunity_id, record in intents.items()
                if opportunity_id not in ended or float(record.get("ts", 0.0)) >= horizon]
        inserted = store.import_rows(rows)
        store.record_fact(FACT, f"{inserted} intents from {path} at {time.time():.3f}")
    if inserted:
        log.warning("outbox: %d intents imported from the decision log %s in %.1f s (once)", inserted, path,
                    time.monotonic() - started)
    return inserted


def _row(intent: dict[str, Any], outcome: dict[str, Any] | None) -> dict[str, Any]:
    order = {name: intent.get(name) for name in ORDER_FIELDS}
    logged_at = float(intent.get("ts", 0.0))
    row: dict[str, Any] = {
        "opportunity_id": intent["opportunity_id"], "instance": "imported", "owner": str(intent.get("owner") or ""),
        "logged_at": logged_at, "expires_at": float(intent.get("expires_at") or logged_at),
        "order_body": orjson.dumps(order).decode(), "checks": 0,
        "status": None, "known": None, "reason": None, "engine_status": None, "ended_at": None,
    }
    if outcome is not None:
        # An outcome an earlier version recorded stands; whether the engine executed an unknown one was never asked.
        row.update(status=outcome.get("status"), known=True, reason=outcome.get("reason"),
                   engine_status=outcome.get("engine_status"), ended_at=float(outcome.get("ts", logged_at)))
    return row
