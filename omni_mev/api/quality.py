"""GET /quality: how good the confidence is on the outcomes callers reported, from the reporter's latest report.

Nothing is computed here: the quality reporter (omni_mev/ledger/reporter.py)
computes every window for every model version at a bounded cadence, and this
view picks the window and names this worker's serving version the champion.
"""
from __future__ import annotations

import time

from flask import Flask, current_app, request

from omni_mev.api import predictor_of
from omni_mev.errors import QualityNotReady, ValidationFailed
from omni_mev.ledger.quality import MODELS, normalise_window, present
from omni_mev.ledger.reporter import QualityReports
from omni_mev.ledger.store import LedgerUnavailable, NullLedger

REPORTS = "omni_mev.quality_reports"


def init_app(app: Flask) -> None:
    """The reader of the live quality report (none where no reporter runs: /quality then says so)."""
    app.extensions[REPORTS] = QualityReports(app.config["SETTINGS"].quality_dir)


def quality():
    """?window=1h|24h|7d (default 1h) &model=champion|shadow (default: both)."""
    window = normalise_window(request.args.get("window", "1h"))
    model = request.args.get("model")
    if model is not None and model not in MODELS:
        raise ValidationFailed(f"model={model!r} is not a model; use champion or shadow.",
                               fields={"model": ["Must be champion or shadow."]})
    predictor = predictor_of(current_app)
    if isinstance(predictor.ledger, NullLedger):
        raise LedgerUnavailable(NullLedger.REASON)
    report = current_app.extensions[REPORTS].latest()
    if report is None:
        raise QualityNotReady("No live quality report yet: the quality reporter that gunicorn starts computes one "
                              f"every AI_QUALITY_REFRESH_S ({predictor.settings.quality_refresh_s:g} s); retry.")
    if report["error"] is not None:
        raise LedgerUnavailable(report["error"])
    answer = present(window, report["windows"][window], report["threshold"], (model,) if model else MODELS,
                     predictor.status().version)
    answer.update(computed_at=round(report["computed_at"], 3),
                  age_s=round(max(0.0, time.time() - report["computed_at"]), 3),
                  computed_in_s=report.get("computed_in_s"))
    return answer
