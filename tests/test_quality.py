"""Live quality: the figures /quality gives agree with the offline evaluation of the same model on the same records."""
from __future__ import annotations

import numpy as np
import pytest

from bench.closed_loop import TOLERANCE, run_loop
from omni_mev.client import Client, OmniMevError
from omni_mev.errors import ValidationFailed
from omni_mev.evaluation import auc_roc
from omni_mev.ledger.quality import model_quality, window_seconds
from omni_mev.ledger.store import LedgerRecords
from tests.servers import EXAMPLE, Gunicorn


def test_closed_loop_agrees_with_the_offline_evaluation():
    with Gunicorn() as server, Client(server.url, timeout=30) as client:
        result = run_loop(client, n=600, seed=11)
        assert client.quality("1h", "champion")["models"].keys() == {"champion"}
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


def _records(confidence, success, decision_threshold=0.5) -> LedgerRecords:
    n = len(confidence)
    success = np.array(success, dtype=np.float64)
    return LedgerRecords(
        opportunity_id=[f"o{i}" for i in range(n)], predicted_at=np.zeros(n), model_version=["v"] * n,
        confidence=np.array(confidence, np.float64), shadow_confidence=np.full(n, np.nan), shadow_version=[None] * n,
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


def test_no_labels_no_figures_and_bad_model_refused():
    report = model_quality(_records([0.9, 0.1], [np.nan, np.nan]), np.array([0.9, 0.1]), 0.5)
    assert report["labelled"] == 0 and report["auc"] is None and report["ece"] is None
    with Gunicorn(workers=1) as server, Client(server.url) as client:
        server.post("/predict", {"features": EXAMPLE, "opportunity_id": "q-1"})
        with pytest.raises(OmniMevError) as refused:
            client.quality("1h", "challenger")
        assert refused.value.status == 422 and "model" in refused.value.fields
        assert client.quality("24h")["models"]["champion"]["labelled"] == 0


def test_ledger_off_says_so(make_app):
    client = make_app(AI_LEDGER_URL="off").test_client()
    assert client.post("/predict", json={"features": EXAMPLE, "opportunity_id": "x"}).status_code == 200
    for response in (client.get("/quality"), client.post("/outcomes", json={"opportunity_id": "x", "success": True})):
        assert response.status_code == 503 and response.get_json()["error"] == "ledger_unavailable"
