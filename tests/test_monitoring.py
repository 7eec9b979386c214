"""monitoring/: promtool's checks and rule unit tests, and every rule and dashboard expression evaluated by a real
Prometheus scraping a running omni-mev in which the test causes the events some of them need."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from omni_mev.registry.store import Registry
from omni_mev.training.simulate import simulate
from tests.engine_stub import EngineStub
from tests.servers import ROOT, Gunicorn, Process, RedisServer, free_port, http, wait_until

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "omni-mev.rules.yml"
DASHBOARD = MONITORING / "grafana" / "omni-mev.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(PROMTOOL is None or PROMETHEUS is None,
                                      reason="prometheus is not installed (make test installs it)")
SEVERITIES = {"critical", "warning", "info"}
# Alerts whose signal is empty on a healthy service until the event happens; the live test causes each one.
CAUSED = {
    "OmniMevModelFallbackActive": "the served ONNX file is corrupt: workers serve the PyTorch weights",
    "OmniMevWorkerDied": "a worker is killed with SIGKILL",
    "OmniMevRedisCircuitOpen": "redis-server is killed",
    "OmniMevDispatchFailures": "the execution engine answers 500 to every LIVE dispatch",
    "OmniMevRetrainFailed": "omni-mev retrain --now with too few outcomes",
    "OmniMevImplausibleInputs": "zero vectors are scored",
    "OmniMevFeatureDrift": "profits beyond the training range are scored",
}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _dashboard_expressions() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)


def signal_of(expr: str) -> str:
    """An alert's expression left of its first top-level comparison: the figure the threshold applies to."""
    depth, quote = 0, ""
    for i, char in enumerate(expr):
        if quote:
            quote = "" if char == quote and expr[i - 1] != "\\" else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and re.match(r"\s(==|!=|>=|<=|>|<)\s", expr[i:]):
            return expr[:i].strip()
    raise AssertionError(f"no comparison in {expr!r}")


# promtool


@needs_prometheus
def test_promtool_checks_the_scrape_config_and_the_rules():
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", "omni-mev.rules.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in rules.stdout


@needs_prometheus
def test_every_alert_fires_on_its_series_and_stays_silent_on_a_healthy_service():
    result = _promtool("test", "rules", "tests/omni-mev.rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((MONITORING / "tests" / "omni-mev.rules.test.yml").read_text())["tests"]
    healthy, *firing = tests
    alerts = {rule["alert"] for rule in _alerts()}
    assert {case["alertname"] for case in healthy["alert_rule_test"] if not case.get("exp_alerts")} == alerts
    assert {case["alertname"] for group in firing for case in group["alert_rule_test"] if case.get("exp_alerts")} \
        == alerts


def test_every_alert_has_a_severity_summary_description_and_a_runbook():
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
                for line in operations.splitlines() if line.startswith("#")}
    alerts = _alerts()
    assert len(alerts) >= 10
    for rule in alerts:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor == rule["alert"].lower() and anchor in headings, rule["alert"]
    names = {rule["alert"] for rule in alerts}
    for required in ("InstanceDown", "High5xxRate", "ModelFallbackActive", "WorkerDied", "HighLatencyP99",
                     "FeatureDrift", "ImplausibleInputs", "LiveAucLow", "LiveCalibrationPoor", "LabelCoverageLow",
                     "DispatchFailures", "RedisCircuitOpen", "LedgerBacklog"):
        assert "OmniMev" + required in names


def test_the_signal_of_an_alert_is_left_of_its_top_level_comparison():
    assert signal_of('up{job="omni-mev"} == 0') == 'up{job="omni-mev"}'
    assert signal_of('a{x=">"} > 0.05 and b >= 500') == 'a{x=">"}'
    assert signal_of("sum(rate(x[5m]) > 1) + y <= 2") == "sum(rate(x[5m]) > 1) + y"


# A real Prometheus against a running omni-mev


class Prometheus(Process):
    """prometheus on a free loopback port, scraping every second, with the project's rules."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        super().__init__([PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={directory / 'data'}",
                          f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"])
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        super().start()
        wait_until(lambda: http("GET", self.url + "/-/ready")[0] == 200, 30, what="prometheus ready")
        return self

    def api(self, path: str, **params: str) -> Any:
        status, body, _ = http("GET", f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10)
        assert status == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]


def _scrape_config(target: str, rules: Path) -> dict[str, Any]:
    """The shipped example, pointed at the test's service, scraping and evaluating every second."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "omni-mev"
    job["static_configs"] = [{"targets": [target]}]
    return config


def _service_registry(directory: Path) -> Path:
    """A registry whose champion's ONNX file is corrupt: the workers serve its PyTorch weights."""
    registry = Registry(directory / "registry")
    version = registry.register(ROOT / "models", user="test").version
    registry.assign("champion", version, user="test")
    (registry.root / "versions" / version / "lstm_omni.onnx").write_bytes(b"not an onnx model")
    return registry.root


def _traffic(server: Gunicorn, n: int, seed: int) -> None:
    """n opportunities with ids (LIVE: each approved one is dispatched), their outcomes, drift and zeros."""
    stream = simulate(n, seed=seed)
    ids = [f"mon-{seed}-{i}" for i in range(n)]
    for opportunity, features in zip(ids, stream.features.tolist()):
        assert server.post("/predict", {"features": features, "opportunity_id": opportunity})[0] == 200
    outcomes = [{"opportunity_id": i, "success": bool(s)} for i, s in zip(ids, stream.label)]
    assert server.post("/outcomes", outcomes)[0] == 200
    drifted = stream.features[:20].copy()
    drifted[:, 0] = 50_000.0  # profit_usd far beyond the training range
    assert server.post("/predict/batch", {"items": [{"features": f} for f in drifted.tolist()]})[0] == 200
    for _ in range(10):
        assert server.post("/predict", {"features": [0.0, 0.0, 2, 0.0, 0.0, 0.0, 1, 0.0]})[0] == 200
    assert server.post("/predict", {"features": "not a vector"})[0] == 422


@needs_prometheus
def test_every_rule_and_dashboard_expression_returns_data_from_a_live_prometheus(tmp_path):
    env = {"AI_MODEL_REGISTRY": str(_service_registry(tmp_path)), "LIVE_TRADING": "true", "AI_THRESHOLD": "0.3",
           "AI_CACHE_ENABLED": "true", "AI_IMPLAUSIBLE_POLICY": "refuse"}
    with RedisServer() as redis_server, EngineStub() as engine:
        engine.mode = "fail"
        env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port), RUST_ENGINE_URL=engine.url)
        with Gunicorn(env) as server:
            assert server.get("/status")[1]["model_type"] == "pytorch"
            _traffic(server, 400, seed=3)
            target = f"127.0.0.1:{server.metrics_port}"
            with Prometheus(tmp_path, _scrape_config(target, RULES)) as prometheus:
                wait_until(lambda: prometheus.query(f'up{{instance="{target}"}} == 1'), 30, what="first scrape")
                time.sleep(3)  # a few samples before the events, so increase() sees them
                # The events: a failed retraining run, Redis gone, a worker killed.
                cli_env = {**os.environ, **env, "AI_LEDGER_URL": server.ledger_url,
                           "OMNI_MEV_ENV_FILE": "/nonexistent"}
                retrain = subprocess.run([sys.executable, "-m", "omni_mev.cli", "retrain", "--now"], cwd=ROOT,
                                         env=cli_env, capture_output=True, text=True, timeout=300)
                assert retrain.returncode == 1 and '"action": "failed"' in retrain.stdout
                redis_server.kill()
                victim = min(server.worker_pids())
                os.kill(victim, signal.SIGKILL)
                wait_until(lambda: len(server.worker_pids() - {victim}) == 2, 30, what="the worker replaced")
                _traffic(server, 150, seed=4)
                wait_until(lambda: prometheus.query("max(ai_redis_circuit_open) == 1"), 30, what="circuit open seen")
                time.sleep(3)  # scrapes and rule evaluations after the events
                _check_rules(prometheus)
                _check_dashboard(prometheus)


def _check_rules(prometheus: Prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(evaluated) == {rule.get("record") or rule.get("alert") for rule in _rules()}
    problems = {name: rule.get("lastError") for name, rule in evaluated.items() if rule["health"] != "ok"}
    assert problems == {}
    missing = []
    for rule in _rules():
        if "record" in rule:
            if not prometheus.query(rule["record"]):
                missing.append(f"recording rule {rule['record']}: no data")
            continue
        name, expr = rule["alert"], rule["expr"]
        if name in CAUSED:  # the test caused its event: the alert's condition holds
            if not prometheus.query(expr):
                missing.append(f"{name}: does not hold after the event ({CAUSED[name]})")
        elif not prometheus.query(signal_of(expr)):
            missing.append(f"{name}: its signal {signal_of(expr)!r} has no data")
    assert missing == []
    active = {alert["labels"]["alertname"] for alert in prometheus.api("alerts")["alerts"]}
    assert set(CAUSED) <= active, set(CAUSED) - active


def _check_dashboard(prometheus: Prometheus) -> None:
    empty = []
    for title, expr in _dashboard_expressions():
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        if not prometheus.query(concrete):
            empty.append((title, expr))
    assert empty == []
    assert len(_dashboard_expressions()) >= 20


def test_dashboard_has_a_datasource_variable_and_covers_the_signals():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    text = " ".join(expr for _, expr in _dashboard_expressions())
    for metric in ("ai_requests_total", "ai_request_duration_ms_bucket", "ai_decisions_total", "ai_confidence_bucket",
                   "ai_model_info", "ai_model_fallback_total", "ai_feature_out_of_range_total", "ai_implausible_total",
                   "ai_quality_auc", "ai_quality_ece", "ai_dispatches_total", "ai_redis_circuit_open",
                   "ai_ledger_pending", "ai_worker_exits_total"):
        assert metric in text, metric
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[0] == "Traffic" and "Live quality (outcome ledger)" in rows


def test_confidence_histogram_counts_batches_like_single_predictions():
    from prometheus_client import CollectorRegistry, Histogram

    from omni_mev import metrics

    def buckets(histogram: Histogram) -> dict[str, float]:
        return {s.labels["le"]: s.value for s in histogram.collect()[0].samples if s.name.endswith("_bucket")}

    registry = CollectorRegistry()
    one_by_one, batched = (Histogram(name, "", buckets=metrics.CONFIDENCE_BUCKETS, registry=registry)
                           for name in ("single", "batch"))
    # float32 confidences, as the model returns them: 0.1 in float32 lies just above the 0.1 bound.
    values = np.array([0.05, 0.1, 0.15, 0.5, 0.95, 1.0, 0.0], dtype=np.float32)
    writes = metrics.BufferedWrites()
    for value in values:
        writes.observe(one_by_one, float(value))
    writes.observe_many(batched, values)
    writes.flush()
    assert buckets(batched) == buckets(one_by_one)
    assert buckets(batched)["0.1"] == 2 and buckets(batched)["0.5"] == 5 and buckets(batched)["+Inf"] == 7
    direct = Histogram("direct", "", buckets=metrics.CONFIDENCE_BUCKETS, registry=registry)
    metrics.DirectWrites().observe_many(direct, values)
    assert buckets(direct) == buckets(one_by_one)
