"""Live quality as Prometheus gauges, read from the quality reporter's latest report (reporter.py).

Registered in the gunicorn master's metrics registry (gunicorn.conf.py): a
scrape reads one small file, never the ledger.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from omni_mev.ledger.quality import present
from omni_mev.ledger.reporter import QualityReports, pause_after

FIGURES = {
    "predictions": "Predictions made in the window (latest per opportunity)",
    "labelled": "Of those, with a reported outcome that says whether the trade succeeded",
    "label_coverage": "labelled / predictions",
    "auc": "ROC AUC of the confidence on the labelled predictions",
    "brier": "Brier score of the confidence on the labelled predictions",
    "log_loss": "Log loss of the confidence on the labelled predictions",
    "ece": "Expected calibration error (15 equal-width bins) on the labelled predictions",
    "precision": "Share of labelled predictions at or above the threshold that succeeded",
    "recall": "Share of labelled successes the threshold approved",
}
LABELS = ["window", "model", "version"]


def _series(report: dict[str, Any]) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """(labels, figures) of each model version in each window: the champion (the version of the newest
    prediction: the one serving now), the versions that served earlier in the window, each shadow version."""
    for window, figures in report["windows"].items():
        models = present(window, figures, report["threshold"])["models"]
        if models["champion"]["version"] is not None:
            yield [window, "champion", models["champion"]["version"]], models["champion"]
        for role in ("earlier", "shadow"):
            for version, values in models.get(role, {}).items():
                yield [window, role, version], values


class QualityCollector(Collector):
    """ai_quality_<figure>{window, model, version} for the windows of /quality, ai_quality_up and the report's age."""

    def __init__(self, directory: Path, refresh_s: float) -> None:
        self.reports = QualityReports(directory)
        self.refresh_s = refresh_s

    def fresh(self, report: dict[str, Any], age_s: float) -> bool:
        """Whether the reporter still reports: the next report was due well before now."""
        expected_s = pause_after(report.get("computed_in_s", 0.0), self.refresh_s) + report.get("computed_in_s", 0.0)
        return age_s <= 3 * expected_s + 60.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.reports.latest()
        age = time.time() - report["computed_at"] if report is not None else None
        up = report is not None and report["error"] is None and age is not None and self.fresh(report, age)
        yield GaugeMetricFamily("ai_quality_up", "1 when the live quality report is fresh and the ledger was read",
                                value=1.0 if up else 0.0)
        if age is not None:
            yield GaugeMetricFamily("ai_quality_report_age_seconds", "Seconds since the live quality report was "
                                    "computed", value=age)
        families = {name: GaugeMetricFamily(f"ai_quality_{name}", text, labels=LABELS)
                    for name, text in FIGURES.items()}
        realised = GaugeMetricFamily("ai_quality_pnl_realised_usd", "Realised PnL of approved labelled trades, USD",
                                     labels=LABELS)
        expected = GaugeMetricFamily("ai_quality_pnl_expected_usd",
                                     "What the confidence expected of the same trades, USD", labels=LABELS)
        if up and report is not None:
            for labels, figures in _series(report):
                for name, family in families.items():
                    if figures.get(name) is not None:
                        family.add_metric(labels, figures[name])
                realised.add_metric(labels, figures["pnl"]["realised_usd"] or 0.0)
                expected.add_metric(labels, figures["pnl"]["expected_usd"] or 0.0)
        yield from families.values()
        yield realised
        yield expected
