"""The champion/challenger loop on a regime shift, the small version of `make shift`, through the running service."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import ROOT


def test_a_retrained_challenger_recovers_the_shifted_market_and_is_promoted(tmp_path):
    """With `omni-mev retrain`'s defaults: no flag sizes the training."""
    result = subprocess.run([sys.executable, "-m", "bench.regime_shift", "--small", "--results", str(tmp_path),
                             "--docs", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    (path,) = tmp_path.glob("regime-shift-*-small.json")
    run = json.loads(path.read_text())
    phases = {p["phase"]: p for p in run["phases"]}
    stale, shadowed, promoted = (phases["after, stale champion"], phases["after, challenger in the shadow"],
                                 phases["after, promoted"])
    # The stale champion served until the gate promoted the challenger; the challenger shadowed it meanwhile.
    assert stale["model_version"] == shadowed["model_version"] == run["champion"] != run["challenger"]
    assert shadowed["shadow_version"] == run["challenger"] == promoted["model_version"]
    assert run["retrain"]["action"] == "trained" and run["gate"]["action"] == "promoted"
    assert run["gate"]["gate"]["passed"] and run["gate"]["gate"]["outcomes"] >= run["sizes"]["min_outcomes"]
    goals = run["goals"]
    assert goals["recovered_within"] <= 0.02, run["phases"]
    assert goals["within_outcomes"] and run["recovery"]["labelled_outcomes"] <= 20_000
    assert goals["stale_gap"] > 2 * goals["stale_gap_se"] > 0, run["stale_on_last_phase"]
    assert result.returncode == 0
    assert (tmp_path / "regime_shift.png").stat().st_size > 10_000
