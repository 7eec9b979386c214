"""The promotion gate: the challenger against the champion on the same live, labelled opportunities.

Both confidences come from the ledger: the champion's as served, the
challenger's as the shadow model scored it on the same request. Only
predictions the champion's ONNX model served while that challenger was its
shadow count, so neither model is judged on data the other never saw. The
evidence asked for grows with the decision: enough outcomes and successes,
and an AUC gain that a paired test on those same outcomes (DeLong's) says
is not noise.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from omni_mev.config import Settings
from omni_mev.ledger.quality import model_quality
from omni_mev.ledger.store import Ledger, LedgerRecords
from omni_mev.windows import window_length

FIGURES = ("auc", "brier", "ece", "log_loss")


@dataclass(frozen=True)
class GateRules:
    """What the challenger must show; each configurable (AI_PROMOTE_*, or the command's flags)."""

    window: str = "7d"
    min_outcomes: int = 500
    min_auc_gain: float = 0.005
    max_brier_increase: float = 0.0
    max_ece_increase: float = 0.0
    min_positives: int = 100
    auc_confidence: float = 0.95

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GateRules:
        rules = cls(settings.promote_window, settings.promote_min_outcomes, settings.promote_min_auc_gain,
                    settings.promote_max_brier_increase, settings.promote_max_ece_increase,
                    settings.promote_min_positives, settings.promote_auc_confidence)
        return cls(**{**asdict(rules), **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class Comparison:
    """The two models' figures on the same outcomes, each rule's verdict, and the gate's."""

    champion: str
    challenger: str
    rules: GateRules
    outcomes: int
    figures: dict[str, Any]
    positives: int = 0  # successes among the outcomes
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion, "challenger": self.challenger, "rules": asdict(self.rules),
                "outcomes": self.outcomes, "positives": self.positives, "figures": self.figures,
                "checks": self.checks, "passed": self.passed}

    def render(self) -> str:
        """The comparison as a small table and the verdict."""
        lines = [f"champion {self.champion} vs challenger {self.challenger}: {self.outcomes} labelled outcomes "
                 f"({self.positives} successes) both scored in the last {self.rules.window}", "",
                 f"{'':12}{'champion':>10}{'challenger':>12}"]
        for name in FIGURES:
            a, b = (self.figures[role][name] for role in ("champion", "challenger"))
            lines.append(f"{name:12}{_cell(a):>10}{_cell(b):>12}")
        lines.append("")
        for check in self.checks:
            lines.append(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['rule']}: {check['detail']}")
        lines.append("")
        lines.append("gate: the challenger " + ("beats the champion" if self.passed else "does not beat the champion"))
        return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def figures_where(records: LedgerRecords, mask: np.ndarray, confidences: np.ndarray) -> dict[str, Any]:
    """AUC, Brier, ECE, log loss and the labelled count of `confidences` on the records `mask` selects."""
    quality = model_quality(records, np.where(mask, confidences, np.nan), threshold=0.5)
    return {"labelled": quality["labelled"], **{name: quality[name] for name in FIGURES}}


def served_by(records: LedgerRecords, version: str) -> np.ndarray:
    return np.array([m == version for m in records.model_version], dtype=bool)


def shadowed_by(records: LedgerRecords, version: str) -> np.ndarray:
    return np.array([s == version for s in records.shadow_version], dtype=bool) & np.isfinite(
        records.shadow_confidence)


def decisions_where(records: LedgerRecords, mask: np.ndarray, confidences: np.ndarray, threshold: float
                    ) -> dict[str, Any]:
    """What a model would have traded at its own threshold on the labelled records `mask` selects: how many, how
    many succeeded, and their realised PnL where reported."""
    labelled = mask & np.isfinite(records.success) & np.isfinite(confidences)
    approved = labelled & (np.nan_to_num(confidences) >= threshold)
    realised = records.realised_pnl_usd[approved]
    return {"threshold": threshold, "approved": int(approved.sum()),
            "approved_successes": int(np.nansum(records.success[approved])),
            "pnl_reported": int(np.isfinite(realised).sum()), "realised_pnl_usd": round(float(np.nansum(realised)), 2)}


def compare(records: LedgerRecords, champion: str, challenger: str, rules: GateRules,
            thresholds: dict[str, float] | None = None) -> Comparison:
    """The gate on ledger records: both models on the predictions where both scored and an outcome says how it went;
    with `thresholds` (each model's own decision threshold, from its card), their decisions too."""
    both = served_by(records, champion) & shadowed_by(records, challenger)
    figures = {role: figures_where(records, both, confidences)
               for role, confidences in (("champion", records.confidence), ("challenger", records.shadow_confidence))}
    if thresholds is not None:
        for role, confidences in (("champion", records.confidence), ("challenger", records.shadow_confidence)):
            figures[role]["decisions"] = decisions_where(records, both, confidences, thresholds[role])
    outcomes = figures["champion"]["labelled"]
    comparison = Comparison(champion, challenger, rules, outcomes, figures)
    a, b = figures["champion"], figures["challenger"]
    comparison.checks.append({"rule": "outcomes", "passed": outcomes >= rules.min_outcomes,
                              "detail": f"{outcomes} labelled, at least {rules.min_outcomes} needed"})
    labelled = both & np.isfinite(records.success) & np.isfinite(records.shadow_confidence)
    positives = comparison.positives = int(records.success[labelled].sum())
    comparison.checks.append({"rule": "positives", "passed": positives >= rules.min_positives,
                              "detail": f"{positives} successes among them, at least {rules.min_positives} needed"})
    measured = outcomes > 0 and None not in (a["auc"], b["auc"])
    paired = paired_auc(records.success[labelled], records.confidence[labelled],
                        records.shadow_confidence[labelled], rules.auc_confidence) if measured else None
    comparison.figures["paired_auc"] = paired
    comparison.checks.append(_auc_check(paired, rules))
    for name, allowed in (("brier", rules.max_brier_increase), ("ece", rules.max_ece_increase)):
        comparison.checks.append({
            "rule": name, "passed": measured and b[name] <= a[name] + allowed,
            "detail": (f"challenger {b[name]:.4f} vs champion {a[name]:.4f}: may be worse by at most {allowed:g}"
                       if measured else "not measurable")})
    if thresholds is not None:
        comparison.checks.append(_decisions_check(a["decisions"], b["decisions"]))
    return comparison


def _auc_check(paired: dict[str, float] | None, rules: GateRules) -> dict[str, Any]:
    """The challenger's AUC gain must reach min_auc_gain, and its lower confidence bound (paired, one-sided at
    auc_confidence) must be above zero: a gain the outcomes cannot tell from noise promotes nothing. (A negative
    min_auc_gain allows a loss: then the bound must be above it.)"""
    if paired is None:
        return {"rule": "auc", "passed": False, "detail": "not measurable (no outcomes of both classes)"}
    gain, lower = paired["gain"], paired["lower_bound"]
    floor = min(rules.min_auc_gain, 0.0)
    passed = gain >= rules.min_auc_gain and lower > floor
    return {"rule": "auc", "passed": passed,
            "detail": f"challenger {paired['challenger']:.4f} vs champion {paired['champion']:.4f}: a gain of "
                      f"{gain:+.4f} (standard error {paired['standard_error']:.4f}; {rules.auc_confidence:.0%} sure it "
                      f"is above {lower:+.4f}); needs a gain of at least {rules.min_auc_gain:g}, and to be sure it "
                      f"is above {floor:g}"}


def paired_auc(y: np.ndarray, champion: np.ndarray, challenger: np.ndarray,
               confidence: float = 0.95) -> dict[str, float] | None:
    """Both models' AUC on the same outcomes, the challenger's gain, its standard error by DeLong's method (the
    covariance of the two AUCs counted: both scored the same opportunities) and the one-sided lower bound of the
    gain at `confidence`; None without both classes."""
    positive = y == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        return None
    per_positive, per_negative, aucs = [], [], []
    for scores in (champion, challenger):
        scores = np.asarray(scores, dtype=np.float64)
        overall = _midranks(scores)
        among_positives, among_negatives = _midranks(scores[positive]), _midranks(scores[~positive])
        # DeLong's structural components: for each positive, the share of negatives it outranks; for each
        # negative, the share of positives that outrank it.
        per_positive.append((overall[positive] - among_positives) / n)
        per_negative.append(1.0 - (overall[~positive] - among_negatives) / m)
        aucs.append(float(per_positive[-1].mean()))
    covariance = (np.atleast_2d(np.cov(per_positive)) / m if m > 1 else np.zeros((2, 2))) + (
        np.atleast_2d(np.cov(per_negative)) / n if n > 1 else np.zeros((2, 2)))
    variance = max(float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]), 0.0)
    gain = aucs[1] - aucs[0]
    error = variance ** 0.5
    return {"champion": aucs[0], "challenger": aucs[1], "gain": gain, "standard_error": error,
            "lower_bound": gain - statistics.NormalDist().inv_cdf(confidence) * error,
            "positives": m, "negatives": n}


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse]


def _decisions_check(champion: dict[str, Any], challenger: dict[str, Any]) -> dict[str, Any]:
    """The challenger's trades at its own threshold must make at least the realised PnL of the champion's at its
    own, on the same opportunities; without reported PnL the decisions are shown, not judged."""
    detail = (f"at their own thresholds the champion ({champion['threshold']:g}) approves {champion['approved']} "
              f"({champion['approved_successes']} succeeded), the challenger ({challenger['threshold']:g}) "
              f"{challenger['approved']} ({challenger['approved_successes']} succeeded)")
    if not (champion["pnl_reported"] or challenger["pnl_reported"]):
        return {"rule": "decisions", "passed": True, "detail": f"{detail}; no realised_pnl_usd reported, so PnL is "
                                                               "not compared"}
    passed = challenger["realised_pnl_usd"] >= champion["realised_pnl_usd"]
    return {"rule": "decisions", "passed": passed,
            "detail": f"{detail}; realised PnL ${challenger['realised_pnl_usd']:,.2f} vs "
                      f"${champion['realised_pnl_usd']:,.2f}: may not be lower"}


def own_thresholds(registry: Any, champion: str, challenger: str) -> dict[str, float]:
    """Each model's decision threshold, from its card in the registry (0.78 where a card has none)."""
    from omni_mev.decision import threshold_in_force

    return {role: threshold_in_force(None, registry.get(version).card)[0]
            for role, version in (("champion", champion), ("challenger", challenger))}


def compare_live(ledger: Ledger, champion: str, challenger: str, rules: GateRules,
                 now: float | None = None, thresholds: dict[str, float] | None = None) -> Comparison:
    """The gate over the ledger's last `rules.window` of predictions."""
    until = time.time() if now is None else now
    return compare(ledger.records(until - window_length(rules.window), until), champion, challenger, rules,
                   thresholds)


def live_figures(records: LedgerRecords, version: str) -> dict[str, dict[str, Any]]:
    """A version's live figures: as the served model, and as the shadow."""
    return {"served": figures_where(records, served_by(records, version), records.confidence),
            "shadow": figures_where(records, shadowed_by(records, version), records.shadow_confidence)}
