"""Markdown summary of a model card (docs/model.md embeds it)."""
from __future__ import annotations

from typing import Any

ROWS = (
    ("lstm_with_history", "LSTM, with history (up to 31 earlier opportunities)"),
    ("lstm_single_vector", "LSTM, single vector (seq = 1)"),
    ("hist_gradient_boosting", "Gradient boosting (trees), single vector"),
    ("ensemble", "Ensemble: LSTM + trees, blended"),
    ("logistic_regression", "Logistic regression, single vector"),
    ("oracle", "Oracle (true probability)"),
)

SERVED_ROW = {"lstm": "lstm_with_history", "trees": "hist_gradient_boosting", "ensemble": "ensemble"}


def served_row(card: dict[str, Any]) -> str:
    """The test-metrics row of the model the card's graph serves (the LSTM on single vectors without history)."""
    return served_test_row(card.get("family", "lstm"), card["test_metrics"])


def served_test_row(family: str, rows: dict[str, Any]) -> str:
    """The row of `rows` (test metrics, or confidences, by model) that the served `family` is judged by."""
    row = SERVED_ROW[family]
    return row if row in rows else "lstm_single_vector"


def markdown(card: dict[str, Any]) -> str:
    """Test-set metrics of every model in the card, as a Markdown table.

    Rows a card lacks are left out: real data has no oracle, and data without a
    stream column has no history.
    """
    metrics = card["test_metrics"]
    thresholds = card["thresholds"]
    points = [("default", thresholds["default"])]
    if "recommended" in thresholds:
        points.append(("recommended", thresholds["recommended"]))
    with_pnl = any("pnl_usd_per_opportunity" in m["at"]["default"] for m in metrics.values())
    header = ["model", "AUC-ROC", "Brier", "ECE"]
    for _, value in points:
        header += [f"P@{value:.3g}", f"R@{value:.3g}", f"F1@{value:.3g}"] + ([f"PnL $/opp @{value:.3g}"] * with_pnl)
    recommended = (f"recommended threshold {thresholds['recommended']:.3f}" if "recommended" in thresholds
                   else "no recommended threshold")
    lines = [
        f"Model version `{card['version'][:12]}` · serves **{card.get('family', 'lstm')}** · test set: "
        f"{card['training']['split']['test']:,} opportunities, the last of the time split · "
        f"{recommended} ({thresholds['recommended_rule']})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for key, label in ROWS:
        if key not in metrics:
            continue
        m = metrics[key]
        cells = [label, f"{m['auc_roc']:.4f}", f"{m['brier']:.4f}", f"{m['ece']:.4f}"]
        for name, _ in points:
            at = m["at"][name]
            cells += [_figure(at["precision"]), _figure(at["recall"]), _figure(at["f1"])]
            if with_pnl:
                cells.append(f"{at['pnl_usd_per_opportunity']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(value: float | None) -> str:
    """A card figure to three places; an undefined one (nothing traded at that threshold) as a dash."""
    return "—" if value is None else f"{value:.3f}"
