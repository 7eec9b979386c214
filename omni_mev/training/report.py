"""Markdown summary of a model card (docs/model.md embeds it)."""
from __future__ import annotations

from typing import Any

ROWS = (
    ("lstm_with_history", "LSTM, 31 earlier opportunities + current"),
    ("lstm_single_vector", "LSTM, single vector (seq = 1)"),
    ("hist_gradient_boosting", "HistGradientBoosting, single vector"),
    ("logistic_regression", "Logistic regression, single vector"),
    ("oracle", "Oracle (true probability)"),
)


def markdown(card: dict[str, Any]) -> str:
    """Test-set metrics of every model in the card, as Markdown tables."""
    metrics = card["test_metrics"]
    recommended = card["thresholds"]["recommended"]
    lines = [
        f"Model version `{card['version'][:12]}` · test set: {card['training']['scored_test_opportunities']:,} "
        f"opportunities of the last {card['training']['split']['test']:,} (time split) · "
        f"recommended threshold {recommended:.3f} ({card['thresholds']['recommended_rule']})",
        "",
        "| model | AUC-ROC | Brier | ECE | P@0.78 | R@0.78 | F1@0.78 | PnL $/opp @0.78 "
        f"| P@{recommended:.3f} | R@{recommended:.3f} | F1@{recommended:.3f} | PnL $/opp @{recommended:.3f} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        m = metrics[key]
        d, r = m["at"]["default"], m["at"]["recommended"]
        lines.append(
            f"| {label} | {m['auc_roc']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} "
            f"| {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | {d['pnl_usd_per_opportunity']:.2f} "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['pnl_usd_per_opportunity']:.2f} |"
        )
    return "\n".join(lines) + "\n"
