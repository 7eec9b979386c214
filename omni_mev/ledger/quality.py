"""Live quality: how good the confidence is on the outcomes callers reported, by prediction time.

Outcomes exist mostly for approved trades (a bot learns what happened to the
trades it made), so figures over all labelled predictions lean towards high
confidences; the report shows approved and rejected predictions apart, with
their label coverage, next to the pooled figures.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from omni_mev.errors import ValidationFailed
from omni_mev.evaluation import (ECE_BINS, auc_roc, brier, expected_calibration_error, log_loss, precision_recall,
                                 reliability_curve)
from omni_mev.ledger.store import Ledger, LedgerRecords
from omni_mev.windows import parse_window

# The windows /quality and the gauges report, computed ahead by the reporter (reporter.py). Other spellings
# of the same durations (60m, 1d, 168h) name the same window; any other window is refused, so varying it
# cannot defeat the precomputation. The CLI and retraining read any window straight from the ledger.
WINDOWS = {"1h": 3_600.0, "24h": 86_400.0, "7d": 604_800.0}
MODELS = ("champion", "shadow")


def window_seconds(window: str) -> float:
    """'1h', '24h', '7d' (or any N m/h/d up to 90 days) in seconds; 422 otherwise."""
    seconds = parse_window(window)
    if seconds is None:
        raise ValidationFailed(f"window={window!r} is not a window; use 1h, 24h or 7d (or N m/h/d up to 90d).",
                               fields={"window": ["Must be 1h, 24h, 7d, or N followed by m, h or d."]})
    return seconds


def normalise_window(window: str) -> str:
    """The name in WINDOWS of the duration `window` spells ('60m' -> '1h'); 422 for any other."""
    seconds = parse_window(window)
    for name, length in WINDOWS.items():
        if seconds == length:
            return name
    allowed = ", ".join(WINDOWS)
    raise ValidationFailed(f"window={window!r} is not one of the reported windows: {allowed} (other spellings of "
                           "the same durations, such as 60m or 1d, are accepted).",
                           fields={"window": [f"Must be one of {allowed}."]})


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


Threshold = float | np.ndarray


def model_quality(records: LedgerRecords, confidences: np.ndarray, threshold: Threshold) -> dict[str, Any]:
    """The figures of one model's confidences on the ledger's records; `threshold` one for every record, or each
    record's own (the threshold its prediction was decided at)."""
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
        limit = threshold[labelled] if isinstance(threshold, np.ndarray) else threshold
        precision, recall = precision_recall(yl, pl, limit)
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


def _versions(names: Sequence[str | None], mask: np.ndarray) -> list[str]:
    return sorted({name for name, kept in zip(names, mask) if kept and name is not None})


def window_figures(records: LedgerRecords, threshold: float | None, since: float, until: float) -> dict[str, Any]:
    """Every version's figures over the records predicted in [since, until]: as the model that answered
    (`served`) and as the shadow (`shadow`), each version on the rows it scored, never pooled. With no
    `threshold`, each prediction is judged at the threshold it was decided at (a model's own, which a promotion
    changes), the shadow's at the served model's."""
    judged_at: Threshold = records.threshold if threshold is None else threshold
    in_window = (records.predicted_at >= since) & (records.predicted_at <= until)
    served_names = np.array(records.model_version, dtype=object)
    shadow_names = np.array(records.shadow_version, dtype=object)
    served: dict[str, Any] = {}
    for version in _versions(records.model_version, in_window):
        mask = in_window & (served_names == version)
        served[version] = model_quality(records, np.where(mask, records.confidence, np.nan), judged_at)
        # When this version answered, within the window: a promotion ends one version's period, so versions are
        # never pooled across it.
        times = records.predicted_at[mask]
        served[version]["served"] = {"from": round(float(times.min()), 3), "until": round(float(times.max()), 3)}
    shadow: dict[str, Any] = {}
    for version in _versions(records.shadow_version, in_window & np.isfinite(records.shadow_confidence)):
        mask = in_window & (shadow_names == version)
        shadow[version] = model_quality(records, np.where(mask, records.shadow_confidence, np.nan), judged_at)
    newest = np.flatnonzero(in_window)
    return {"since": round(since, 3), "until": round(until, 3), "served": served, "shadow": shadow,
            "newest_version": records.model_version[newest[-1]] if len(newest) else None,
            "newest_threshold": float(records.threshold[newest[-1]]) if len(newest) else None}


def present(window: str, figures: dict[str, Any], threshold: float | None, models: tuple[str, ...] = MODELS,
            serving_version: str | None = None) -> dict[str, Any]:
    """The /quality answer from a window's figures: the champion is the version serving now (by default the
    version of the newest prediction), over the rows it scored; other versions that answered in the window are
    `earlier`; the shadow is reported per challenger version. `threshold`: the one the figures used, or None
    when each prediction was judged at its own (then the newest prediction's is shown)."""
    champion = serving_version or figures["newest_version"]
    if threshold is None:
        threshold = figures.get("newest_threshold")
    served = figures["served"]
    report: dict[str, Any] = {"window": window, "since": figures["since"], "until": figures["until"],
                              "threshold": threshold, "models": {}}
    if "champion" in models:
        own = served.get(champion) if champion is not None else None
        report["models"]["champion"] = {"version": champion, **(own or _no_rows(threshold))}
        earlier = {version: values for version, values in served.items() if version != champion}
        if earlier:
            report["models"]["earlier"] = earlier
    if "shadow" in models and figures["shadow"]:
        report["models"]["shadow"] = figures["shadow"]
    return report


def _no_rows(threshold: float | None) -> dict[str, Any]:
    return model_quality(_EMPTY, np.empty(0), 0.5 if threshold is None else threshold)


def quality_report(ledger: Ledger, window: str, threshold: float | None, models: tuple[str, ...] = MODELS,
                   now: float | None = None, serving_version: str | None = None) -> dict[str, Any]:
    """Quality over any window, read from the ledger now (the CLI and retraining; /quality reads the reporter's)."""
    seconds = window_seconds(window)
    until = time.time() if now is None else now
    records = ledger.records(until - seconds, until)
    return present(window, window_figures(records, threshold, until - seconds, until), threshold, models,
                   serving_version)


_EMPTY = LedgerRecords(
    opportunity_id=[], predicted_at=np.empty(0), model_version=[], confidence=np.empty(0),
    shadow_confidence=np.empty(0), shadow_version=[], threshold=np.empty(0), decision=np.empty(0, bool),
    profit_usd=np.empty(0), executed=np.empty(0, bool), has_outcome=np.empty(0, bool), success=np.empty(0),
    realised_pnl_usd=np.empty(0), windows=[])
