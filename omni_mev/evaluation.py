"""Classification metrics of calibrated confidences, in NumPy alone.

One implementation serves the model card (omni_mev.training), the live
quality report (omni_mev.ledger.quality) and `omni-mev evaluate`, so offline
and live figures are computed the same way.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15
_EPSILON = 1e-15


def auc_roc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties at half); None with a single class."""
    y = np.asarray(y).astype(bool)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = np.asarray(p)[order]
    # Average ranks over runs of equal confidences.
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(p)]])
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the confidences."""
    return float(np.mean((np.asarray(p, np.float64) - y) ** 2))


def log_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each example's negative log-likelihood (confidences clipped away from 0 and 1)."""
    q = np.clip(np.asarray(p, np.float64), _EPSILON, 1 - _EPSILON)
    return -np.where(np.asarray(y).astype(bool), np.log(q), np.log1p(-q))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood."""
    return float(np.mean(log_losses(y, p)))


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(p, edges) - 1, 0, bins - 1)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Weighted mean |observed rate - mean confidence| over equal-width bins."""
    which = _bins(p, bins)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(total / len(y))


# The largest noise floor at which an ECE is taken to mean something: on rows where a perfectly calibrated model
# shows more than this by chance, a calibration error of this size cannot be told from luck.
MEANINGFUL_ECE_FLOOR = 0.015


def ece_noise_floor(p: np.ndarray, draws: int = 200, seed: int = 0, bins: int = ECE_BINS) -> float:
    """The ECE a perfectly calibrated model would show on these confidences by chance alone: the mean ECE of
    outcomes drawn from the confidences themselves. What a measured ECE on as many rows can be told apart from."""
    p = np.asarray(p, np.float64)
    if len(p) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(rng.uniform(size=len(p)) < p, p, bins) for _ in range(draws)]))


def ece_evidence(y: np.ndarray, p: np.ndarray) -> dict[str, object]:
    """What an ECE measured on (y, p) rests on: rows, successes, the noise floor, and whether that is enough."""
    floor = ece_noise_floor(p)
    enough = bool(floor <= MEANINGFUL_ECE_FLOOR)
    return {"rows": int(len(y)), "successes": int(np.sum(y)), "noise_floor": round(floor, 4), "enough": enough,
            "meaning": (f"a perfectly calibrated model would show an ECE of {floor:.4f} on these rows by chance" +
                        ("" if enough else f": too few rows for an ECE to mean much below that (it takes a noise "
                                           f"floor of {MEANINGFUL_ECE_FLOOR:g} or less)"))}


def reliability_curve(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, observed rate, count) per non-empty bin."""
    which = _bins(p, bins)
    rows = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            rows.append((float(p[in_bin].mean()), float(y[in_bin].mean()), int(in_bin.sum())))
    return rows


def precision_recall(y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray
                     ) -> tuple[float | None, float | None]:
    """Precision and recall of `p >= threshold`, one threshold or each row's own (None where undefined)."""
    take = p >= threshold
    tp = int((take & (y == 1)).sum())
    precision = tp / int(take.sum()) if take.any() else None
    recall = tp / int((y == 1).sum()) if (y == 1).any() else None
    return precision, recall
