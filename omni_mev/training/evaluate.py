"""Metrics for the model card: discrimination, calibration and the trading threshold."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


def evaluate_model(model_path: Path, dataset: Any, threshold: float) -> dict:
    """The card's metrics of an ONNX model on a dataset, each opportunity scored with all its history."""
    from omni_mev.evaluation import log_loss
    from omni_mev.runtime.onnx_runtime import OnnxModel

    model = OnnxModel(model_path)
    model.load()
    p = np.empty(len(dataset), dtype=np.float64)
    for index, windows in dataset.scored_windows():
        for start in range(0, len(index), 8192):
            p[index[start:start + 8192]] = model.predict(np.ascontiguousarray(windows[start:start + 8192]))
    thresholds = {"given": threshold}
    pnl = np.nan_to_num(dataset.pnl) if dataset.has_pnl else None
    metrics = summarise(dataset.label, p, thresholds, pnl)
    metrics["log_loss"] = log_loss(dataset.label, p)
    report = {"model": str(model_path), "model_version": model.version, "data": dataset.source,
              "opportunities": len(dataset), "success_rate": float(dataset.label.mean()), **metrics}
    if dataset.oracle is not None:
        report["oracle_auc"] = auc_roc(dataset.label, dataset.oracle)
    return report
