"""The registry as Prometheus metrics, read by the master's metrics server on each scrape.

`omni-mev retrain` runs outside the service (a systemd timer); what it did is in
the registry's history, so the service's /metrics reports it without any
process talking to another.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from omni_mev.registry.store import Registry

log = logging.getLogger(__name__)
RETRAIN_RESULTS = {"retrain": "trained", "retrain_failed": "failed"}


class RegistryCollector(Collector):
    """ai_model_alias{alias,version}, ai_retrain_runs_total{result}, ai_retrain_last_run_timestamp_seconds{result}."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        aliases = GaugeMetricFamily("ai_model_alias", "1 for each registry alias and the version it points to",
                                    labels=["alias", "version"])
        try:
            current = self.registry.aliases()
        except Exception as error:  # noqa: BLE001 - a shared database down: the scrape still answers
            log.warning("registry aliases unreadable: %s", error)
            current = {}
        for alias, version in current.items():
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
        except Exception as error:  # noqa: BLE001 - a file or a shared database: the scrape still answers
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
