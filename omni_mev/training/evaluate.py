"""Metrics for the model card: discrimination, calibration and the trading threshold."""
from __future__ import annotations

import numpy as np

ECE_BINS = 15


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Weighted mean |observed rate - mean confidence| over equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(total / len(y))


def reliability_curve(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS):
    """(mean confidence, observed rate, count) per non-empty bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            rows.append((float(p[in_bin].mean()), float(y[in_bin].mean()), int(in_bin.sum())))
    return rows


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float, pnl: np.ndarray | None = None) -> dict:
    """Precision, recall and F1 of `p >= threshold`, and the PnL of trading those."""
    take = p >= threshold
    tp = int((take & (y == 1)).sum())
    precision = tp / take.sum() if take.any() else 0.0
    recall = tp / (y == 1).sum() if (y == 1).any() else 0.0
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
    from sklearn.metrics import brier_score_loss, roc_auc_score

    return {
        "auc_roc": float(roc_auc_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
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
