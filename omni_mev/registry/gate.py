"""The promotion gate: the challenger against the champion on the same live, labelled opportunities.

Both confidences come from the ledger: the champion's as served, the
challenger's as the shadow model scored it on the same request. Only
predictions the champion's ONNX model served while that challenger was its
shadow count, so neither model is judged on data the other never saw.
"""
from __future__ import annotations

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

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GateRules:
        rules = cls(settings.promote_window, settings.promote_min_outcomes, settings.promote_min_auc_gain,
                    settings.promote_max_brier_increase, settings.promote_max_ece_increase)
        return cls(**{**asdict(rules), **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class Comparison:
    """The two models' figures on the same outcomes, each rule's verdict, and the gate's."""

    champion: str
    challenger: str
    rules: GateRules
    outcomes: int
    figures: dict[str, dict[str, Any]]
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion, "challenger": self.challenger, "rules": asdict(self.rules),
                "outcomes": self.outcomes, "figures": self.figures, "checks": self.checks, "passed": self.passed}

    def render(self) -> str:
        """The comparison as a small table and the verdict."""
        lines = [f"champion {self.champion} vs challenger {self.challenger}: {self.outcomes} labelled outcomes "
                 f"both scored in the last {self.rules.window}", "",
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
    measured = outcomes > 0 and None not in (a["auc"], b["auc"])
    comparison.checks.append({
        "rule": "auc", "passed": measured and b["auc"] >= a["auc"] + rules.min_auc_gain,
        "detail": (f"challenger {b['auc']:.4f} vs champion {a['auc']:.4f}: needs a gain of at least "
                   f"{rules.min_auc_gain:g}" if measured else "not measurable (no outcomes of both classes)")})
    for name, allowed in (("brier", rules.max_brier_increase), ("ece", rules.max_ece_increase)):
        comparison.checks.append({
            "rule": name, "passed": measured and b[name] <= a[name] + allowed,
            "detail": (f"challenger {b[name]:.4f} vs champion {a[name]:.4f}: may be worse by at most {allowed:g}"
                       if measured else "not measurable")})
    if thresholds is not None:
        comparison.checks.append(_decisions_check(a["decisions"], b["decisions"]))
    return comparison


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
