"""Metrics for the model card: discrimination, calibration and the trading threshold."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from omni_mev.evaluation import auc_roc, brier, expected_calibration_error, precision_recall


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float, pnl: np.ndarray | None = None) -> dict:
    """Precision, recall and F1 of `p >= threshold`, and the PnL of trading those. A figure that is undefined
    (precision when nothing reaches the threshold, recall without a success) is None, and `undefined` says why."""
    take = p >= threshold
    precision, recall = precision_recall(y, p, threshold)
    f1 = (2 * precision * recall / (precision + recall) if precision + recall else 0.0) \
        if precision is not None and recall is not None else None
    row: dict[str, Any] = {
        "threshold": round(float(threshold), 4),
        "precision": None if precision is None else float(precision),
        "recall": None if recall is None else float(recall),
        "f1": None if f1 is None else float(f1),
        "trade_share": float(take.mean()),
    }
    undefined = {}
    if precision is None:
        top = float(p.max()) if len(p) else None
        undefined["precision"] = (f"no opportunity reached the threshold {threshold:g} (the highest confidence was "
                                  f"{top:.4f}): nothing would be traded" if top is not None else "no opportunities")
    if recall is None:
        undefined["recall"] = "no success among the opportunities"
    if undefined:
        row["undefined"] = undefined
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


def confidences(model: Any, dataset: Any, batch: int = 8192) -> np.ndarray:
    """A loaded model's confidence for every example of `dataset`, each scored with all its history."""
    p = np.empty(len(dataset), dtype=np.float64)
    for index, windows in dataset.scored_windows():
        for start in range(0, len(index), batch):
            p[index[start:start + batch]] = model.predict(np.ascontiguousarray(windows[start:start + batch]))
    return p


class NothingHeldOut(Exception):
    """Every row of the data falls in the model's training period."""


def held_out_rows(card: dict[str, Any], dataset: Any) -> tuple[np.ndarray, str | None]:
    """The rows of `dataset` observed after the period the model was fitted on (its card's
    `training.periods.fitted_until`: training and validation), and a warning when some are not; every row
    when the card does not say."""
    fitted_until = card.get("training", {}).get("periods", {}).get("fitted_until_epoch_s")
    if fitted_until is None:
        return np.arange(len(dataset)), None
    after = np.flatnonzero(dataset.observed_at > float(fitted_until))
    overlap = len(dataset) - len(after)
    if not overlap:
        return after, None
    until = card["training"]["periods"]["fitted_until"]
    warning = (f"{overlap:,} of {len(dataset):,} rows were observed up to {until}, the end of the period this model "
               f"was fitted on: a model scores the rows it learned from better than the market it will meet. ")
    if not len(after):
        raise NothingHeldOut(warning + "No row is left to score; give data observed later, or --all to score "
                                       "these rows anyway (the figures will flatter the model).")
    return after, warning + f"Scored the {len(after):,} later rows only (--all scores every row)."


def evaluate_model(model_path: Path, dataset: Any, threshold: float | None = None, every_row: bool = False,
                   png: Path | None = None) -> dict:
    """The card's metrics of an ONNX model on a dataset, each opportunity scored with all its history; at
    `threshold`, or the model's own decision threshold (its card's).

    Unless every_row, only the rows observed after the model's training period are scored (held_out_rows;
    NothingHeldOut when none are); the report's `warning` says when rows were left out.
    """
    from omni_mev.decision import threshold_in_force
    from omni_mev.evaluation import log_loss
    from omni_mev.runtime.loader import read_card
    from omni_mev.runtime.onnx_runtime import OnnxModel

    card = read_card(model_path)
    threshold, threshold_source = threshold_in_force(threshold, card)
    rows, warning = (np.arange(len(dataset)), None) if every_row else held_out_rows(card, dataset)
    model = OnnxModel(model_path)
    model.load()
    # Every row keeps its whole history (earlier rows included) even when only later rows are scored.
    p = confidences(model, dataset)
    labels, p = dataset.label[rows], p[rows]
    pnl = np.nan_to_num(dataset.pnl[rows]) if dataset.has_pnl else None
    metrics = summarise(labels, p, {"given": threshold}, pnl)
    metrics["log_loss"] = log_loss(labels, p)
    report = {"model": str(model_path), "model_version": model.version, "data": dataset.source,
              "opportunities": int(len(rows)), "rows_in_data": len(dataset),
              "success_rate": float(labels.mean()), "threshold": threshold,
              "threshold_source": "--threshold" if threshold_source == "AI_THRESHOLD" else threshold_source,
              **metrics}
    if warning:
        report["warning"] = warning
    if dataset.oracle is not None:
        report["oracle_auc"] = auc_roc(labels, dataset.oracle[rows])
    if png is not None:
        from omni_mev.evaluation import reliability_curve
        from omni_mev.reliability_plot import reliability_png

        curves = {f"model {model.version}: AUC {metrics['auc_roc']:.3f}, ECE {metrics['ece']:.3f}":
                  reliability_curve(labels, p)}
        if dataset.oracle is not None:
            curves[f"the true probability: AUC {report['oracle_auc']:.3f}"] = reliability_curve(
                labels, dataset.oracle[rows])
        reliability_png(curves, png, f"Reliability on {Path(dataset.source).name}"
                                     f"{'' if every_row else ' (rows after the training period)'}: n = {len(rows):,}, "
                                     f"threshold {threshold:g} ({threshold_source})", threshold)
        report["reliability_png"] = str(png)
    return report
