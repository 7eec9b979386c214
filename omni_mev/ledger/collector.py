"""Live quality as Prometheus gauges, computed from the ledger by the metrics server, at most every REFRESH_S.

Registered in the gunicorn master's metrics registry (gunicorn.conf.py): one
process computes the figures for all workers, on a scrape, never on a request.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from omni_mev.ledger.quality import WINDOWS, quality_report
from omni_mev.ledger.store import LedgerUnavailable, SqlLedger

log = logging.getLogger(__name__)
REFRESH_S = 15.0
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


class QualityCollector(Collector):
    """ai_quality_<figure>{window, model} for the windows of /quality, and ai_quality_up."""

    def __init__(self, ledger_url: str, threshold: float) -> None:
        self.ledger_url = ledger_url
        self.threshold = threshold
        self._lock = threading.Lock()
        self._computed_at = float("-inf")
        self._reports: dict[str, dict[str, Any]] = {}
        self._up = 0.0

    def _refresh(self) -> None:
        ledger = SqlLedger(self.ledger_url)
        try:
            self._reports = {window: quality_report(ledger, window, self.threshold) for window in WINDOWS}
            self._up = 1.0
        except LedgerUnavailable as error:
            log.warning("live quality not computed: %s", error.message)
            self._up = 0.0
        finally:
            ledger.engine.dispose()  # no connection outlives the scrape (the master forks workers)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._computed_at >= REFRESH_S:
                self._refresh()
                self._computed_at = time.monotonic()
            reports, up = self._reports, self._up
        yield GaugeMetricFamily("ai_quality_up", "1 when the live quality figures could be computed", value=up)
        families = {name: GaugeMetricFamily(f"ai_quality_{name}", text, labels=["window", "model"])
                    for name, text in FIGURES.items()}
        realised = GaugeMetricFamily("ai_quality_pnl_realised_usd", "Realised PnL of approved labelled trades, USD",
                                     labels=["window", "model"])
        expected = GaugeMetricFamily("ai_quality_pnl_expected_usd",
                                     "What the confidence expected of the same trades, USD", labels=["window", "model"])
        for window, report in reports.items():
            for model, figures in report["models"].items():
                for name, family in families.items():
                    if figures.get(name) is not None:
                        family.add_metric([window, model], figures[name])
                realised.add_metric([window, model], figures["pnl"]["realised_usd"] or 0.0)
                expected.add_metric([window, model], figures["pnl"]["expected_usd"] or 0.0)
        yield from families.values()
        yield realised
        yield expected
