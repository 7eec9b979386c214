"""The layers of docs/architecture.md hold: import-linter checks the contracts in .importlinter."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_layers_hold():
    result = lint(ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """The check reads the real import graph: a contract the code breaks (the predictor writes to the ledger)
    fails, naming the import."""
    config = tmp_path / "broken.ini"
    config.write_text("[importlinter]\nroot_package = omni_mev\n\n[importlinter:contract:broken]\n"
                      "name = the predictor without the ledger\ntype = forbidden\n"
                      "source_modules =\n    omni_mev.predictor\nforbidden_modules =\n    omni_mev.ledger\n")
    result = lint(config)
    assert result.returncode == 1 and "omni_mev.predictor -> omni_mev.ledger" in result.stdout, result.stdout[-3000:]
