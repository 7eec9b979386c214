"""Summary of a decision log and of the dispatch outbox: `omni-mev decisions [--json] [PATH]`."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from omni_mev.trading.decision_log import (DISPATCH_EVENT, OUTCOME_EVENT, PAPER_EVENT, RECONCILED_EVENT,
                                           RESEND_EVENT)


def read(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, lines that are not complete JSON records)."""
    records, bad = [], 0
    with open(path, "rb") as stream:
        for line in stream:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict) and "event" in record:
                records.append(record)
            else:
                bad += 1
    return records, bad


def _trades(records: list[dict[str, Any]]) -> dict[str, Any]:
    if not records:
        return {"count": 0}
    confidence = np.array([r["confidence"] for r in records])
    volume = sum(r["features"]["input_amount_thousands"] * 1000.0 for r in records)
    profit = sum(r["features"]["profit_usd"] for r in records)
    histogram, edges = np.histogram(confidence, bins=10, range=(0.0, 1.0))
    return {
        "count": len(records),
        "unique_opportunities": len({r.get("opportunity_id") for r in records if r.get("opportunity_id")}),
        "volume_usd": round(volume, 2),
        "expected_profit_usd": round(profit, 2),
        "confidence": {
            "mean": round(float(confidence.mean()), 4),
            **{f"p{q}": round(float(np.percentile(confidence, q)), 4) for q in (10, 50, 90)},
            "histogram": {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(n) for i, n in enumerate(histogram) if n},
        },
    }


def _shadow(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    pairs = [(r["confidence"], r["shadow_confidence"], r["threshold"]) for r in records if "shadow_confidence" in r]
    if not pairs:
        return None
    agree = sum((s >= t) == (c >= t) for c, s, t in pairs)
    return {"compared": len(pairs), "agreement_rate": round(agree / len(pairs), 4),
            "mean_abs_difference": round(float(np.mean([abs(s - c) for c, s, _ in pairs])), 4)}


def summarise(path: Path, outbox: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts, confidence distribution and volume, for paper and live records; live outcomes as the books end
    them (a reconciliation's verdict over an unknown outcome); `outbox`: the outbox table's own counts."""
    records, bad = read(path)
    paper = [r for r in records if r["event"] == PAPER_EVENT]
    dispatched = [r for r in records if r["event"] == DISPATCH_EVENT]
    # An intent whose worker died between its commit and its log line has no `dispatch` line; the worker that took it
    # over wrote its order with the `resend` line.
    logged = {r["opportunity_id"] for r in dispatched}
    for record in records:
        if record["event"] == RESEND_EVENT and "features" in record and record["opportunity_id"] not in logged:
            logged.add(record["opportunity_id"])
            dispatched.append(record)
    outcomes = {r["opportunity_id"]: r for r in records if r["event"] == OUTCOME_EVENT}
    verdicts = {r["opportunity_id"]: r for r in records if r["event"] == RECONCILED_EVENT}

    def final(opportunity_id: str) -> str:
        if opportunity_id in verdicts:
            return str(verdicts[opportunity_id]["status"])
        return str(outcomes[opportunity_id]["status"]) if opportunity_id in outcomes else "unknown"

    statuses = Counter(final(r["opportunity_id"]) for r in dispatched)
    awaiting = sorted(i for i, r in outcomes.items() if r.get("known") is False and i not in verdicts)
    summary = {
        "path": str(path),
        "records": len(records),
        "unreadable_lines": bad,
        "paper": {**_trades(paper), "would_have_traded": True},
        "live": {**_trades(dispatched), "outcomes": dict(statuses),
                 "reconciled": dict(Counter(r["verdict"] for r in verdicts.values())),
                 "awaiting_reconciliation": awaiting},
        "shadow": _shadow(paper + dispatched),
    }
    if outbox is not None:
        summary["outbox"] = outbox
    return summary


def outbox_report(url: str) -> dict[str, Any] | None:
    """The outbox table's counts and its unreconciled intents; None where no SQLite outbox was ever made."""
    from omni_mev.database import sqlite_directory
    from omni_mev.trading.intent_store import IntentStore

    if sqlite_directory(url) is not None and not Path(url.split(":///", 1)[1]).is_file():
        return None
    store = IntentStore(url)
    return {"database": store.engine.dialect.name, **store.counts(), "unreconciled_intents": store.unreconciled()}


def render(summary: dict[str, Any]) -> str:
    """Plain-text report."""
    lines = [f"decision log {summary['path']}: {summary['records']} records, "
             f"{summary['unreadable_lines']} unreadable lines"]
    for name in ("paper", "live"):
        part = summary[name]
        if not part["count"]:
            lines.append(f"  {name}: none")
            continue
        conf = part["confidence"]
        lines.append(f"  {name}: {part['count']} trades ({part['unique_opportunities']} distinct ids), "
                     f"volume ${part['volume_usd']:,.2f}, expected profit ${part['expected_profit_usd']:,.2f}")
        lines.append(f"    confidence mean {conf['mean']:.3f}, p10 {conf['p10']:.3f}, p50 {conf['p50']:.3f}, "
                     f"p90 {conf['p90']:.3f}; histogram {conf['histogram']}")
        if name == "live":
            lines.append(f"    outcomes {part['outcomes']}; reconciled by key {part['reconciled']}; "
                         f"awaiting reconciliation {len(part['awaiting_reconciliation'])}")
    outbox = summary.get("outbox")
    if outbox:
        lines.append(f"  outbox ({outbox['database']}): outcomes {outbox['outcomes']}, reconciled {outbox['reconciled']}, "
                     f"unreconciled {outbox['unreconciled']}")
        for row in outbox["unreconciled_intents"][:20]:
            lines.append(f"    unreconciled {row['opportunity_id']!r}: {row['status']}, asked {row['checks']} times "
                         f"({row['reason']})")
    if summary["shadow"]:
        shadow = summary["shadow"]
        lines.append(f"  shadow: {shadow['compared']} compared, agreement {shadow['agreement_rate']:.1%}, "
                     f"mean |difference| {shadow['mean_abs_difference']:.4f}")
    return "\n".join(lines) + "\n"
