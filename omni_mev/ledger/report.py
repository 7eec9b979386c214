"""The live quality report for people: a table, and a reliability diagram."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ROWS = (("predictions", "predictions in the window"), ("labelled", "with a success label"),
        ("label_coverage", "label coverage"), ("not_executed", "reported not executed"), ("auc", "AUC"),
        ("brier", "Brier"), ("log_loss", "log loss"), ("ece", "ECE (15 bins)"), ("precision", "precision at threshold"),
        ("recall", "recall at threshold"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _period(figures: dict[str, Any]) -> str:
    """When a version answered, as its label says it: each served version is its own period."""
    served = figures.get("served")
    if not served:
        return ""
    start, end = (time.strftime("%m-%d %H:%M", time.gmtime(served[key])) for key in ("from", "until"))
    return f" (served {start} to {end} UTC)"


def columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, figures) per model version: the champion (the version serving now), the versions that served
    earlier, each with the period it answered, and each shadow."""
    models = report["models"]
    found = []
    if "champion" in models:
        champion = models["champion"]
        found.append((f"champion {champion['version'] or '-'}" + (_period(champion) if champion.get("predictions")
                                                                 else " (no prediction yet)"), champion))
    found += [(f"earlier {version}{_period(figures)}", figures) for version, figures in models.get("earlier", {}).items()]
    found += [(f"shadow {version}", figures) for version, figures in models.get("shadow", {}).items()]
    return found


def render(report: dict[str, Any]) -> str:
    """Plain-text table, one column per model version, side by side."""
    found = columns(report)
    width = max([16, *(len(name) + 2 for name, _ in found)])
    lines = [f"live quality, window {report['window']}, threshold {report['threshold']}", ""]
    lines.append(f"{'':28}" + "".join(f"{name:>{width}}" for name, _ in found))
    for key, label in ROWS:
        lines.append(f"{label:28}" + "".join(f"{_cell(figures.get(key)):>{width}}" for _, figures in found))
    for side in ("approved", "rejected"):
        for key in ("predictions", "labelled", "label_coverage", "success_rate", "mean_confidence"):
            label = f"{side}: {key.replace('_', ' ')}"
            lines.append(f"{label:28}" + "".join(f"{_cell(figures[side].get(key)):>{width}}" for _, figures in found))
    for key, label in (("realised_usd", "PnL realised, USD"), ("expected_usd", "PnL expected, USD")):
        lines.append(f"{label:28}" + "".join(f"{_cell(figures['pnl'][key]):>{width}}" for _, figures in found))
    lines += ["", "Each column is one model version on the rows it scored. Outcomes come mostly from approved "
                  "trades:", "compare approved and rejected coverage before trusting pooled figures "
                  "(docs/operations.md)."]
    return "\n".join(lines) + "\n"


def reliability_png(report: dict[str, Any], path: Path) -> None:
    """Observed success rate against mean confidence per bin, each model version, with the bins' counts."""
    from omni_mev.reliability_plot import reliability_png as draw

    curves = {f"{name}, ECE {figures['ece']:.3f}" if figures.get("ece") is not None else name:
              [(b["mean_confidence"], b["observed_rate"], b["count"]) for b in figures["reliability"]]
              for name, figures in columns(report)}
    draw(curves, path, f"Live reliability, window {report['window']} (labelled outcomes of the ledger)",
         report["threshold"])
