"""Live quality: the figures /quality gives agree with the offline evaluation of the same model on the same records."""
from __future__ import annotations

import numpy as np
import pytest

from bench.closed_loop import TOLERANCE, run_loop
from omni_mev.client import Client, OmniMevError
from omni_mev.errors import ValidationFailed
from omni_mev.evaluation import auc_roc
from omni_mev.ledger.quality import model_quality, normalise_window, present, window_figures, window_seconds
from omni_mev.ledger.store import LedgerRecords, Outcome, PredictionRow, SqlLedger
from tests.servers import EXAMPLE, ROOT, Gunicorn, wait_until


def test_closed_loop_agrees_with_the_offline_evaluation():
    with Gunicorn() as server, Client(server.url, timeout=30) as client:
        result = run_loop(client, n=600, seed=11)
        assert client.quality("1h", "champion")["models"].keys() == {"champion"}
        assert client.quality("1h", "champion")["models"]["champion"]["version"] == client.status()["model_version"]
    assert result["live"]["labelled"] == result["live"]["predictions"] == result["offline"]["labelled"] == 600
    assert abs(result["live"]["auc"] - result["offline"]["auc"]) <= TOLERANCE["auc"]
    assert abs(result["live"]["ece"] - result["offline"]["ece"]) <= TOLERANCE["ece"]
    assert result["agree"] and result["max_confidence_difference"] <= 1.1e-6


@pytest.mark.parametrize(("window", "seconds"), [("1h", 3600), ("24h", 86400), ("7d", 604800), ("15m", 900)])
def test_windows(window, seconds):
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "1y", "0h", "91d", "1h;drop", "-1h"])
def test_bad_windows_refused(window):
    with pytest.raises(ValidationFailed):
        window_seconds(window)


@pytest.mark.parametrize(("spelled", "window"), [("1h", "1h"), ("60m", "1h"), ("1d", "24h"), ("1440m", "24h"),
                                                 ("168h", "7d"), ("7d", "7d")])
def test_reported_windows_are_normalised(spelled, window):
    assert normalise_window(spelled) == window


@pytest.mark.parametrize("window", ["2h", "59m", "30d", "1y", ""])
def test_windows_outside_the_reported_set_are_refused(window):
    with pytest.raises(ValidationFailed) as refused:
        normalise_window(window)
    assert refused.value.fields == {"window": ["Must be one of 1h, 24h, 7d."]}


def _records(confidence, success, decision_threshold=0.5, versions=None, shadow=None,
             shadow_versions=None) -> LedgerRecords:
    n = len(confidence)
    success = np.array(success, dtype=np.float64)
    return LedgerRecords(
        opportunity_id=[f"o{i}" for i in range(n)], predicted_at=np.arange(n, dtype=np.float64),
        model_version=versions or ["v"] * n, confidence=np.array(confidence, np.float64),
        shadow_confidence=np.full(n, np.nan) if shadow is None else np.array(shadow, np.float64),
        shadow_version=shadow_versions or [None] * n,
        threshold=np.full(n, decision_threshold), decision=np.array(confidence) >= decision_threshold,
        profit_usd=np.full(n, 10.0), executed=np.isfinite(success), has_outcome=np.isfinite(success), success=success,
        realised_pnl_usd=np.where(np.isfinite(success), 1.0, np.nan), windows=[np.zeros((1, 8), np.float32)] * n)


def test_approved_and_rejected_shown_apart_with_their_coverage():
    # Outcomes mostly for approved trades, as bots report them: the pooled AUC
    # is computed on a biased sample, and the split shows it.
    confidence = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.05]
    success = [1, 1, 0, 1, np.nan, np.nan, np.nan, 0]
    report = model_quality(_records(confidence, success), np.array(confidence), threshold=0.5)
    assert (report["predictions"], report["labelled"], report["label_coverage"]) == (8, 5, 0.625)
    assert report["approved"] == {"predictions": 4, "labelled": 4, "label_coverage": 1.0, "success_rate": 0.75,
                                  "mean_confidence": 0.75}
    assert report["rejected"]["label_coverage"] == 0.25 and report["rejected"]["success_rate"] == 0.0
    labelled = [i for i, s in enumerate(success) if s == s]
    assert report["auc"] == pytest.approx(auc_roc(np.array(success)[labelled], np.array(confidence)[labelled]))
    assert report["pnl"]["approved_labelled"] == 4 and report["pnl"]["expected_usd"] == pytest.approx(30.0)


def test_each_model_version_is_judged_on_the_rows_it_scored_never_pooled():
    """After a promotion the window holds two versions: pooled, a good old and a good new model can look bad."""
    rng = np.random.default_rng(5)
    n = 400
    success = rng.integers(0, 2, n).astype(float)
    # Each version ranks well, but on its own scale: pooled, the scales mix and the AUC drops.
    old = np.where(success == 1, 0.5, 0.3) + rng.normal(0, 0.05, n)
    new = np.where(success == 1, 0.8, 0.6) + rng.normal(0, 0.05, n)
    serving = np.arange(n) >= n // 2  # the new version serves the second half
    confidence = np.clip(np.where(serving, new, old), 0.01, 0.99)
    versions = ["new000000000" if s else "old000000000" for s in serving]
    shadow_versions = ["chalA0000000" if k % 2 else "chalB0000000" for k in range(n)]
    shadow = np.clip(np.where(np.arange(n) % 2 == 1, new, 1 - new), 0.01, 0.99)
    records = _records(confidence.tolist(), success.tolist(), versions=versions, shadow=shadow.tolist(),
                       shadow_versions=shadow_versions)
    report = present("1h", window_figures(records, 0.5, 0.0, float(n)), 0.5, serving_version="new000000000")
    champion, earlier, challengers = (report["models"][k] for k in ("champion", "earlier", "shadow"))
    assert champion["version"] == "new000000000" and champion["predictions"] == n // 2
    assert champion["auc"] == pytest.approx(auc_roc(success[serving].astype(np.int8), confidence[serving]), abs=1e-6)
    assert list(earlier) == ["old000000000"] and earlier["old000000000"]["predictions"] == n // 2
    pooled = auc_roc(success.astype(np.int8), confidence)
    assert champion["auc"] > pooled + 0.05 and earlier["old000000000"]["auc"] > pooled + 0.05
    assert set(challengers) == {"chalA0000000", "chalB0000000"}
    assert challengers["chalA0000000"]["auc"] > 0.9 > 0.1 > challengers["chalB0000000"]["auc"]
    # Without a serving version (the CLI, the gauges): the version of the newest prediction.
    assert present("1h", window_figures(records, 0.5, 0.0, float(n)), 0.5)["models"]["champion"]["version"] \
        == "new000000000"


def _seed_ledger(url: str, version: str, n: int, at: float) -> None:
    """n labelled predictions by another model version, as an earlier champion left them."""
    ledger = SqlLedger(url)
    window = np.array(EXAMPLE, np.float32).tobytes()
    ledger.record([PredictionRow(f"old-{i}", at, "predict", "SIMULATION", "onnx", version, 0.9 if i % 2 else 0.1,
                                 None, None, 0.78, i % 2 == 1, None, 1, window) for i in range(n)])
    ledger.flush()
    ledger.add_outcomes([Outcome(f"old-{i}", True, i % 2 == 1, None, at) for i in range(n)])
    ledger.engine.dispose()


def test_quality_is_served_from_the_reporter_per_version_and_window(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _seed_ledger(url, "0ld0ld0ld0ld", 30, time.time() - 120)
    with Gunicorn({"AI_LEDGER_URL": url}, workers=2) as server, Client(server.url, timeout=30) as client:
        ids = [f"new-{i}" for i in range(40)]
        for k, opportunity_id in enumerate(ids):
            client.predict([*EXAMPLE[:4], k / 40, *EXAMPLE[5:]], opportunity_id=opportunity_id)
        answer = client.post_outcomes([{"opportunity_id": i, "success": k % 3 == 0} for k, i in enumerate(ids)])
        assert answer["stored"] == 40 and answer["unknown"] == []
        report = client.quality("60m", computed_after=time.time())
        serving = client.status()["model_version"]
        assert report["window"] == "1h" and report["age_s"] >= 0
        champion = report["models"]["champion"]
        assert (champion["version"], champion["predictions"], champion["labelled"]) == (serving, 40, 40)
        assert report["models"]["earlier"]["0ld0ld0ld0ld"]["labelled"] == 30
        with pytest.raises(OmniMevError) as refused:
            client.quality("2h")
        assert refused.value.status == 422 and refused.value.fields == {"window": ["Must be one of 1h, 24h, 7d."]}
        # `omni-mev quality` reads the ledger itself, with the same split.
        cli = subprocess.run([sys.executable, "-m", "omni_mev.cli", "quality", "--window", "1h", "--json",
                              "--url", url, "--png", str(tmp_path / "live.png")], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env={**os.environ, "OMNI_MEV_ENV_FILE": "/nonexistent"})
        assert cli.returncode == 0, cli.stderr
        assert (tmp_path / "live.png").read_bytes().startswith(b"\x89PNG")
        offline = json.loads(cli.stdout)["models"]
        assert offline["champion"]["version"] == serving and offline["champion"]["auc"] == champion["auc"]
        assert offline["earlier"]["0ld0ld0ld0ld"]["labelled"] == 30
        # The reporter is the master's: killed, it is started again, and /quality answers meanwhile.
        workers = server.worker_pids()
        (reporter,) = server.reporter_pids()
        os.kill(reporter, signal.SIGKILL)
        assert server.get("/quality")[0] == 200
        wait_until(lambda: server.reporter_pids() - {reporter}, 30, what="the reporter started again")
        killed_at = time.time()
        assert client.quality("1h", computed_after=killed_at)["computed_at"] > killed_at
        assert server.worker_pids() == workers


def test_no_labels_no_figures_and_bad_model_refused():
    report = model_quality(_records([0.9, 0.1], [np.nan, np.nan]), np.array([0.9, 0.1]), 0.5)
    assert report["labelled"] == 0 and report["auc"] is None and report["ece"] is None
    with Gunicorn(workers=1) as server, Client(server.url) as client:
        server.post("/predict", {"features": EXAMPLE, "opportunity_id": "q-1"})
        with pytest.raises(OmniMevError) as refused:
            client.quality("1h", "challenger")
        assert refused.value.status == 422 and "model" in refused.value.fields
        assert server.quality("window=24h")["models"]["champion"]["labelled"] == 0


def test_ledger_off_says_so(make_app):
    client = make_app(AI_LEDGER_URL="off").test_client()
    assert client.post("/predict", json={"features": EXAMPLE, "opportunity_id": "x"}).status_code == 200
    for response in (client.get("/quality"), client.post("/outcomes", json={"opportunity_id": "x", "success": True})):
        assert response.status_code == 503 and response.get_json()["error"] == "ledger_unavailable"


def test_the_reporter_uses_at_most_its_share_of_a_core():
    from omni_mev.ledger.reporter import MAX_DUTY, pause_after

    assert pause_after(0.1, 10.0) == 10.0  # a small ledger: the configured cadence
    for took in (1.0, 5.8, 60.0):  # a large one: the pause grows with the work
        pause = pause_after(took, 10.0)
        assert took / (took + pause) == pytest.approx(MAX_DUTY) and pause > 10.0


def test_right_after_a_promotion_the_picture_labels_each_version_as_it_served(tmp_path):
    """The registry names the new champion before it has answered anything: it is the champion, with no
    prediction yet; the old one is `earlier`, labelled with the period it served; each prediction is judged at the
    threshold it was decided at."""
    from omni_mev.ledger.report import columns, reliability_png

    n = 200
    success = (np.arange(n) % 3 == 0).astype(float)
    records = _records(np.linspace(0.05, 0.95, n).tolist(), success.tolist(), decision_threshold=0.6,
                       versions=["old000000000"] * n)
    report = present("1h", window_figures(records, None, 0.0, float(n)), None, serving_version="new000000000")
    names = [name for name, _ in columns(report)]
    assert names[0] == "champion new000000000 (no prediction yet)"
    assert names[1].startswith("earlier old000000000 (served 01-01 00:00 to 01-01 00:03 UTC)")
    assert report["threshold"] == 0.6  # the threshold the newest prediction was decided at
    assert report["models"]["earlier"]["old000000000"]["approved"]["predictions"] == int((np.linspace(
        0.05, 0.95, n) >= 0.6).sum())
    reliability_png(report, tmp_path / "live.png")
    assert (tmp_path / "live.png").read_bytes().startswith(b"\x89PNG")


def test_the_ece_noise_floor_is_what_a_calibrated_model_shows_by_chance_and_shrinks_with_rows():
    from omni_mev.evaluation import ece_evidence, ece_noise_floor, expected_calibration_error

    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.6, 1_200)
    measured = [expected_calibration_error(rng.uniform(size=len(p)) < p, p) for _ in range(100)]
    assert ece_noise_floor(p) == pytest.approx(np.mean(measured), rel=0.15)
    many = rng.uniform(0.02, 0.6, 120_000)
    assert ece_noise_floor(many, draws=20) < ece_noise_floor(p) / 5  # ~1/sqrt(rows)
    y = rng.uniform(size=len(many)) < many
    assert ece_evidence(y, many)["enough"] is True and ece_evidence(y[:1_200], many[:1_200])["enough"] is False
