"""The linters the project configures run on every `make test`: ruff (ruff.toml) and mypy (setup.cfg)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_reports_what_it_is_configured_to_find(tmp_path):
    """The configuration is read and its rules fire: a blind except without a reason, and a noqa for a rule that
    does not fire, are both reported."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    try:\n        return 1\n    except Exception:\n        return 2\n\n\n"
                      "x = 1  # noqa: E501\n")
    result = run("ruff", "check", "--config", str(ROOT / "ruff.toml"), str(sample))
    assert result.returncode == 1 and "BLE001" in result.stdout and "RUF100" in result.stdout, result.stdout


def test_mypy_finds_nothing():
    result = run("mypy")
    assert result.returncode == 0, result.stdout[-4000:]
