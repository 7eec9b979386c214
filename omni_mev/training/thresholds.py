"""The decision threshold a model is trained with: chosen on the validation period by a documented rule, and
written on the card as `thresholds.decision`, which the service decides at unless AI_THRESHOLD is set.

- `pnl`, when the validation rows report realised_pnl_usd: the threshold that maximises the realised PnL
  per opportunity of trading every opportunity scored at or above it;
- `lift`, otherwise: the lowest threshold at which the approved validation opportunities succeeded at least
  TARGET_LIFT times as often as all of them (for a market that succeeds more than a third of the time, halfway
  from its rate to certainty): the model approves ordinary opportunities, and what it approves is worth it.

Either way at least MIN_APPROVED validation opportunities must be approved, so the choice does not rest on a
handful. When no threshold meets the rule the decision is 1.0: the model approves nothing, and the card says
why (set AI_THRESHOLD to decide otherwise).
"""
from __future__ import annotations

from typing import Any

import numpy as np

TARGET_LIFT = 2.0
MIN_APPROVED = 30
NEVER = 1.0


def _between(sorted_desc: np.ndarray, k: int) -> float:
    """A threshold that approves exactly the first k confidences: halfway to the next lower one."""
    lower = float(sorted_desc[k]) if k < len(sorted_desc) else 0.0
    return float((sorted_desc[k - 1] + lower) / 2.0)


def choose(p: np.ndarray, y: np.ndarray, pnl: np.ndarray | None = None) -> dict[str, Any]:
    """{"decision", "rule", "evidence"}: the threshold for confidences `p` of outcomes `y` (validation), by the
    module's rules; `pnl` the realised PnL per row (NaN where not reported)."""
    order = np.argsort(-p, kind="stable")
    ranked, labels = p[order], y[order].astype(np.float64)
    counts = np.arange(1, len(p) + 1)
    base = float(y.mean()) if len(y) else 0.0
    if pnl is not None and np.isfinite(pnl).sum() >= MIN_APPROVED:
        gains = np.cumsum(np.nan_to_num(pnl[order]))
        eligible = np.flatnonzero(counts >= MIN_APPROVED)
        best = int(eligible[np.argmax(gains[eligible])]) if len(eligible) else -1
        if best >= 0 and gains[best] > 0:
            k = best + 1
            return {"decision": round(_between(ranked, k), 4), "rule": "pnl", "evidence": _evidence(
                k, len(p), labels, base, gains[best] / len(p))}
        return {"decision": NEVER, "rule": "pnl", "evidence": {
            "validation_rows": len(p), "why": "no threshold with at least "
                                              f"{MIN_APPROVED} approvals makes a realised profit on validation"}}
    target = min(TARGET_LIFT * base, (1.0 + base) / 2.0)
    precision = np.cumsum(labels) / counts
    meeting = np.flatnonzero((precision >= target) & (counts >= MIN_APPROVED))
    if len(meeting):
        k = int(meeting[-1]) + 1
        return {"decision": round(_between(ranked, k), 4), "rule": "lift", "evidence": {
            **_evidence(k, len(p), labels, base), "target_success_rate": round(target, 4)}}
    return {"decision": NEVER, "rule": "lift", "evidence": {
        "validation_rows": len(p), "success_rate": round(base, 4), "target_success_rate": round(target, 4),
        "why": f"no threshold approving at least {MIN_APPROVED} validation opportunities reaches the target"}}


def _evidence(k: int, n: int, labels: np.ndarray, base: float, pnl_per_opportunity: float | None = None
              ) -> dict[str, Any]:
    evidence = {"validation_rows": n, "approved": k, "approved_share": round(k / n, 4),
                "approved_success_rate": round(float(labels[:k].mean()), 4), "success_rate": round(base, 4)}
    if pnl_per_opportunity is not None:
        evidence["pnl_usd_per_opportunity"] = round(float(pnl_per_opportunity), 4)
    return evidence


RULES = {
    "pnl": "maximises the realised PnL per opportunity on the validation period (at least "
           f"{MIN_APPROVED} approvals)",
    "lift": f"the lowest threshold whose validation approvals succeeded at least {TARGET_LIFT:g} times as often as "
            f"all opportunities (at least {MIN_APPROVED} approvals; the data has no realised_pnl_usd)",
}
