"""The registry as Prometheus metrics, read by the master's metrics server on each scrape.

`omni-mev retrain` runs outside the service (a systemd timer); what it did is in
the registry's history, so the service's /metrics reports it without any
process talking to another.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from omni_mev.registry.store import Registry

log = logging.getLogger(__name__)
RETRAIN_RESULTS = {"retrain": "trained", "retrain_failed": "failed"}


class RegistryCollector(Collector):
    """ai_model_alias{alias,version}, ai_retrain_runs_total{result}, ai_retrain_last_run_timestamp_seconds{result}."""

    def __init__(self, root: Path) -> None:
        self.registry = Registry(root)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        aliases = GaugeMetricFamily("ai_model_alias", "1 for each registry alias and the version it points to",
                                    labels=["alias", "version"])
        for alias, version in self.registry.aliases().items():
            if version is not None:
                aliases.add_metric([alias, version], 1.0)
        runs = CounterMetricFamily("ai_retrain_runs", "Retraining runs that trained a challenger or failed",
                                   labels=["result"])
        last = GaugeMetricFamily("ai_retrain_last_run_timestamp_seconds", "When a retraining run last had this result",
                                 labels=["result"])
        counts = dict.fromkeys(RETRAIN_RESULTS.values(), 0)
        latest: dict[str, float] = {}
        try:
            history = self.registry.history()
        except (OSError, ValueError) as error:
            log.warning("registry history unreadable: %s", error)
            history = []
        for event in history:
            result = RETRAIN_RESULTS.get(event.get("event", ""))
            if result is not None:
                counts[result] += 1
                latest[result] = dt.datetime.fromisoformat(event["at"]).timestamp()
        for result, count in counts.items():
            runs.add_metric([result], count)
            if result in latest:
                last.add_metric([result], latest[result])
        yield aliases
        yield runs
        yield last
