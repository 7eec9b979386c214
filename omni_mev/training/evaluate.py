"""Metrics for the model card: discrimination, calibration and the trading threshold."""
from __future__ import annotations

import numpy as np

from omni_mev.evaluation import auc_roc, brier, expected_calibration_error, precision_recall


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float, pnl: np.ndarray | None = None) -> dict:
    """Precision, recall and F1 of `p >= threshold`, and the PnL of trading those."""
    take = p >= threshold
    precision, recall = (value or 0.0 for value in precision_recall(y, p, threshold))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    row = {
        "threshold": round(float(threshold), 4),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "trade_share": float(take.mean()),
    }
    if pnl is not None:
        row["pnl_usd_per_opportunity"] = float(pnl[take].sum() / len(y))
    return row


def summarise(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: dict[str, float],
    pnl: np.ndarray | None = None,
) -> dict:
    """All model-card metrics of one set of predictions."""
    return {
        "auc_roc": auc_roc(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
        "mean_confidence": float(p.mean()),
        "at": {name: at_threshold(y, p, t, pnl) for name, t in thresholds.items()},
    }


def pnl_optimal_threshold(p: np.ndarray, pnl: np.ndarray) -> float:
    """Threshold that maximises the simulated PnL of trading everything above it."""
    order = np.argsort(-p)
    cumulative = np.cumsum(pnl[order])
    best = int(np.argmax(cumulative))
    if cumulative[best] <= 0:
        return 1.0
    # Halfway to the next lower confidence, so the chosen set is stable.
    lower = p[order[best + 1]] if best + 1 < len(p) else 0.0
    return float((p[order[best]] + lower) / 2.0)
