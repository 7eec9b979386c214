"""The live quality report for people: a table, and a reliability diagram."""
from __future__ import annotations

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


def columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, figures) per model version: the champion, the versions that served earlier, each shadow."""
    models = report["models"]
    found = []
    if "champion" in models:
        found.append((f"champion {models['champion']['version'] or '-'}", models["champion"]))
    for role in ("earlier", "shadow"):
        found += [(f"{role} {version}", figures) for version, figures in models.get(role, {}).items()]
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
    """Observed success rate against mean confidence per bin, each model, point size by count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, figures in columns(report):
        bins = figures["reliability"]
        if bins:
            axis.scatter([b["mean_confidence"] for b in bins], [b["observed_rate"] for b in bins],
                         s=[20 + 200 * b["count"] / max(x["count"] for x in bins) for b in bins], alpha=0.7,
                         label=f"{name} (n={figures['labelled']:,}, ECE {figures['ece']:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("mean confidence")
    axis.set_ylabel("observed success rate")
    axis.set_title(f"live reliability, window {report['window']}")
    axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
