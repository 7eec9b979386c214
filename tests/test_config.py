"""Settings: defaults, the contract's variable names, and one clear line for a bad value."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from omni_mev.config import ConfigError, load_settings
from omni_mev.decision import threshold_in_force
from omni_mev.runtime.loader import read_card
from tests.conftest import ROOT


def test_defaults():
    settings = load_settings(environ={})
    # Unset: the served model's own threshold, which for the shipped model is the documented 0.78.
    assert settings.threshold is None
    assert threshold_in_force(settings.threshold, read_card(settings.model_path)) == (0.78, "model card")
    assert settings.port == 8001
    assert settings.prometheus_port == 9090
    assert settings.host == "127.0.0.1"
    assert settings.mode == "SIMULATION"
    assert settings.model_path == ROOT / "models" / "lstm_omni.onnx"
    assert settings.fallback_weights_path == ROOT / "models" / "lstm_omni.pt"
    assert settings.redis_host is None and settings.workers >= 1


def test_contract_names_read():
    settings = load_settings(environ={
        "LIVE_TRADING": "true", "AI_MODEL_PATH": "/srv/m.onnx", "AI_THRESHOLD": "0.9", "AI_ENGINE_PORT": "8002",
        "RUST_ENGINE_URL": "http://127.0.0.1:7000/", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6380",
        "PROMETHEUS_PORT": "9191",
    })
    assert settings.live_trading and settings.mode == "LIVE"
    assert str(settings.model_path) == "/srv/m.onnx" and str(settings.fallback_weights_path) == "/srv/m.pt"
    assert (settings.threshold, settings.port, settings.redis_port, settings.prometheus_port) == (0.9, 8002, 6380, 9191)
    assert settings.rust_engine_url == "http://127.0.0.1:7000"


def test_env_file_read_and_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("AI_THRESHOLD=0.6\nAI_ENGINE_PORT=8100\n")
    settings = load_settings(environ={"OMNI_MEV_ENV_FILE": str(env_file), "AI_ENGINE_PORT": "8200"})
    assert settings.threshold == 0.6 and settings.port == 8200


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AI_THRESHOLD", "abc", "AI_THRESHOLD='abc' is not a number; allowed: a number from 0 to 1"),
        ("AI_THRESHOLD", "1.5", "AI_THRESHOLD='1.5' is out of range; allowed: a number from 0 to 1"),
        ("AI_THRESHOLD", "nan", "AI_THRESHOLD='nan' is out of range"),
        ("AI_ENGINE_PORT", "70000", "AI_ENGINE_PORT='70000' is out of range; allowed: an integer from 1 to 65535"),
        ("REDIS_PORT", "x", "REDIS_PORT='x' is not an integer"),
        ("PROMETHEUS_PORT", "0", "PROMETHEUS_PORT='0' is out of range"),
        ("LIVE_TRADING", "maybe", "LIVE_TRADING='maybe' is not a boolean"),
        ("RUST_ENGINE_URL", "localhost:7000", "RUST_ENGINE_URL='localhost:7000' is not a URL"),
    ],
)
def test_bad_values_named(name, value, expected):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={name: value})
    assert str(raised.value).startswith(expected)
    assert "\n" not in str(raised.value)


def test_live_without_engine_refused():
    with pytest.raises(ConfigError, match="LIVE_TRADING=true needs RUST_ENGINE_URL"):
        load_settings(environ={"LIVE_TRADING": "1"})


def test_gunicorn_start_refused_with_one_line():
    env = {"PATH": "/usr/bin:/bin", "AI_THRESHOLD": "1.5", "OMNI_MEV_ENV_FILE": "/nonexistent", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["omni-mev: configuration error: AI_THRESHOLD='1.5' is out of range; allowed: a number from 0 to 1"]


def test_default_workers_follow_a_containers_cpu_limit(tmp_path):
    """cgroup v2's cpu.max (or v1's quota), as a container sees it: a limit caps the workers (rounded up), no
    limit leaves the CPU count, and no file is no limit."""
    from omni_mev.config import default_workers

    cpus = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert default_workers(cpu_max) == cpus
    cpu_max.write_text("100000 100000\n")
    assert default_workers(cpu_max) == 1
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two workers, never more than the CPUs there are
    assert default_workers(cpu_max) == min(2, cpus)
    cpu_max.write_text("6400000 100000\n")
    assert default_workers(cpu_max) == cpus
    # cgroup v1: the quota and the period in two files; -1 is no limit.
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    assert default_workers(tmp_path / "absent", v1) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert default_workers(tmp_path / "absent", v1) == cpus
    assert default_workers(tmp_path / "absent", tmp_path / "absent") == cpus
