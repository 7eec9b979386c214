"""Live quality: how good the confidence is on the outcomes callers reported, by prediction time.

Outcomes exist mostly for approved trades (a bot learns what happened to the
trades it made), so figures over all labelled predictions lean towards high
confidences; the report shows approved and rejected predictions apart, with
their label coverage, next to the pooled figures.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from omni_mev.errors import ValidationFailed
from omni_mev.evaluation import (ECE_BINS, auc_roc, brier, expected_calibration_error, log_loss, precision_recall,
                                 reliability_curve)
from omni_mev.ledger.store import Ledger, LedgerRecords
from omni_mev.windows import parse_window

WINDOWS = {"1h": 3_600.0, "24h": 86_400.0, "7d": 604_800.0}
MODELS = ("champion", "shadow")


def window_seconds(window: str) -> float:
    """'1h', '24h', '7d' (or any N m/h/d up to 90 days) in seconds; 422 otherwise."""
    seconds = parse_window(window)
    if seconds is None:
        raise ValidationFailed(f"window={window!r} is not a window; use 1h, 24h or 7d (or N m/h/d up to 90d).",
                               fields={"window": ["Must be 1h, 24h, 7d, or N followed by m, h or d."]})
    return seconds


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _subset(labelled: np.ndarray, y: np.ndarray, p: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    with_label = labelled & mask
    count = int(with_label.sum())
    return {
        "predictions": n,
        "labelled": count,
        "label_coverage": _rounded(count / n if n else None, 4),
        "success_rate": _rounded(float(y[with_label].mean()) if count else None, 4),
        "mean_confidence": _rounded(float(p[with_label].mean()) if count else None, 4),
    }


def model_quality(records: LedgerRecords, confidences: np.ndarray, threshold: float) -> dict[str, Any]:
    """The figures of one model's confidences on the ledger's records."""
    scored = np.isfinite(confidences)
    labelled = scored & np.isfinite(records.success)
    y = np.nan_to_num(records.success).astype(np.int8)
    p = np.where(scored, confidences, 0.0)
    approved = scored & (p >= threshold)
    n = int(scored.sum())
    count = int(labelled.sum())
    report: dict[str, Any] = {
        "predictions": n,
        "labelled": count,
        "label_coverage": _rounded(count / n if n else None, 4),
        "not_executed": int((records.has_outcome & ~records.executed & scored).sum()),
        "auc": None, "brier": None, "log_loss": None, "ece": None, "reliability": [],
        "precision": None, "recall": None,
    }
    if count:
        yl, pl = y[labelled], p[labelled]
        precision, recall = precision_recall(yl, pl, threshold)
        report.update(
            auc=_rounded(auc_roc(yl, pl)), brier=_rounded(brier(yl, pl)), log_loss=_rounded(log_loss(yl, pl)),
            ece=_rounded(expected_calibration_error(yl, pl)), precision=_rounded(precision), recall=_rounded(recall),
            reliability=[{"mean_confidence": round(c, 6), "observed_rate": round(r, 6), "count": k}
                         for c, r, k in reliability_curve(yl, pl, ECE_BINS)],
        )
    traded = approved & labelled
    realised = records.realised_pnl_usd[traded]
    report["pnl"] = {
        "approved_labelled": int(traded.sum()),
        "realised_usd": _rounded(float(np.nansum(realised)), 2),
        "reported": int(np.isfinite(realised).sum()),
        # What the confidence promised: each approved trade's profit after gas
        # times its probability of landing it (the cost of a failure is not in
        # the features, so this is an upper bound of the expectation).
        "expected_usd": _rounded(float((p[traded] * records.profit_usd[traded]).sum()), 2),
    }
    report["approved"] = _subset(labelled, y, p, approved)
    report["rejected"] = _subset(labelled, y, p, scored & ~approved)
    return report


def quality_report(ledger: Ledger, window: str, threshold: float, models: tuple[str, ...] = MODELS,
                   now: float | None = None) -> dict[str, Any]:
    """The /quality answer: each model's figures over the predictions made in the last `window`."""
    seconds = window_seconds(window)
    until = time.time() if now is None else now
    records = ledger.records(until - seconds, until)
    report: dict[str, Any] = {"window": window, "since": round(until - seconds, 3), "until": round(until, 3),
                              "threshold": threshold, "models": {}}
    if "champion" in models:
        report["models"]["champion"] = {"versions": sorted(set(records.model_version)),
                                        **model_quality(records, records.confidence, threshold)}
    if "shadow" in models and np.isfinite(records.shadow_confidence).any():
        report["models"]["shadow"] = model_quality(records, records.shadow_confidence, threshold)
    return report
