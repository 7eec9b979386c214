"""Automatic retraining: one step of the champion/challenger loop, run by `omni-mev retrain` (a systemd timer).

Each run does one of these, in this order:

1. A challenger is waiting: once both models have scored enough labelled
   outcomes, the gate decides. It is promoted, or rejected (the alias is
   cleared, the comparison kept in the history). Until then, nothing.
2. No challenger: if a trigger fires or --now is given, train one on the
   ledger's recent labelled window and register it as the challenger. The
   service then scores it as the shadow model on live traffic. Triggers, on
   by default but the quality limits: the labelled outcomes since the last
   training have grown by AI_RETRAIN_GROWTH of the rows it was trained on;
   on those outcomes the successes depart from the champion's confidences
   (a shift, AI_RETRAIN_SHIFT_Z); the schedule; the champion's live AUC or
   calibration past a limit the operator set.

A failure anywhere leaves the champion serving; the reason goes to the log,
the registry's history and, through the service's metrics,
ai_retrain_runs_total{result="failed"}.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from omni_mev.config import Settings
from omni_mev.ledger.quality import quality_report
from omni_mev.ledger.store import SqlLedger
from omni_mev.registry.election import sole_retrainer
from omni_mev.registry.gate import GateRules, compare_live, own_thresholds
from omni_mev.registry.store import WEIGHTS_FILE, Registry
from omni_mev.windows import window_length

log = logging.getLogger(__name__)
ACTOR = "omni-mev retrain"


@dataclass
class RetrainResult:
    """What a run did: promoted, rejected, waiting, trained, not_due, busy (another run holds the lock) or
    failed."""

    action: str
    detail: str
    version: str | None = None
    comparison: dict[str, Any] | None = None
    triggers: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.action == "failed"


class RetrainFailed(Exception):
    """Retraining could not produce a challenger; the champion keeps serving."""


def _timestamp(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class LastTraining:
    """The most recent model trained, by its data: where its data ends, how many rows it had, which it is."""

    until: float
    rows: int
    what: str


def last_training(registry: Registry) -> LastTraining | None:
    """The champion's training or the last retraining run (a challenger, promoted or not), whichever is later."""
    found = []
    champion = registry.resolve("champion")
    if champion is not None:
        training = champion.card.get("training", {})
        until = training.get("periods", {}).get("fitted_until_epoch_s")
        rows = training.get("data", {}).get("rows")
        if until is not None and rows:
            found.append(LastTraining(float(until), int(rows), f"the champion {champion.version[:12]}"))
    retrains = [e for e in registry.history() if e.get("event") == "retrain" and e.get("rows")]
    if retrains:
        event = retrains[-1]
        found.append(LastTraining(_timestamp(event["at"]), int(event["rows"]), f"challenger {event['version'][:12]}"))
    return max(found, key=lambda last: last.until, default=None)


def triggers(settings: Settings, registry: Registry, ledger: SqlLedger, now: float) -> list[str]:
    """Why a challenger should be trained now (empty: not due)."""
    reasons = []
    last = last_training(registry)
    if last is not None and settings.retrain_growth:
        reasons += _grown(settings, ledger, last, now)
    if last is not None and settings.retrain_shift_z:
        reasons += _shifted(settings, registry, ledger, last, now)
    if settings.retrain_every is not None:
        every = window_length(settings.retrain_every)
        trained = [_timestamp(e["at"]) for e in registry.history() if e.get("event") in ("retrain", "set_champion")]
        if not trained:
            reasons.append("schedule: no challenger has been trained yet")
        elif now - trained[-1] >= every:
            reasons.append(f"schedule: the last was trained {(now - trained[-1]) / 86_400:.1f} days ago "
                           f"(AI_RETRAIN_EVERY={settings.retrain_every})")
    if settings.retrain_below_auc is not None or settings.retrain_above_ece is not None:
        champion = registry.resolve("champion")
        report = quality_report(ledger, settings.retrain_quality_window, settings.threshold, ("champion",), now=now,
                                serving_version=champion.version if champion is not None else None)
        live = report["models"]["champion"]
        if live["labelled"] < settings.promote_min_outcomes:
            log.info("live quality not judged: %d labelled outcomes in %s, %d needed", live["labelled"],
                     settings.retrain_quality_window, settings.promote_min_outcomes)
        else:
            window = settings.retrain_quality_window
            if settings.retrain_below_auc is not None and live["auc"] is not None \
                    and live["auc"] < settings.retrain_below_auc:
                reasons.append(f"quality: live AUC {live['auc']:.4f} over {window} is below "
                               f"AI_RETRAIN_BELOW_AUC={settings.retrain_below_auc:g}")
            if settings.retrain_above_ece is not None and live["ece"] is not None \
                    and live["ece"] > settings.retrain_above_ece:
                reasons.append(f"quality: live ECE {live['ece']:.4f} over {window} is above "
                               f"AI_RETRAIN_ABOVE_ECE={settings.retrain_above_ece:g}")
    return reasons


def _grown(settings: Settings, ledger: SqlLedger, last: LastTraining, now: float) -> list[str]:
    """Growth: the evidence since the last training is a good share of what it learnt from, so a model trained on
    all of it now should know more (a loop that retrained once after a shift, on a few thousand outcomes, would
    otherwise serve that model until the schedule)."""
    start = now - window_length(settings.retrain_window)
    needed = max(math.ceil(settings.retrain_growth * last.rows), 1)
    grown = ledger.labelled_count(max(last.until, start), now)
    if grown < needed or ledger.labelled_count(start, now) < settings.retrain_min_outcomes:
        return []
    return [f"growth: {grown} labelled outcomes since {last.what} was trained on {last.rows} rows "
            f"(AI_RETRAIN_GROWTH={settings.retrain_growth:g}: {needed} needed)"]


def _shifted(settings: Settings, registry: Registry, ledger: SqlLedger, last: LastTraining, now: float) -> list[str]:
    """A shift: on the outcomes the champion served since the last training, its successes are not what its
    confidences expect (calibration in the large, which holds on any selection made by the confidence, such as
    the trades it approved). The count is compared with its expectation in standard errors of a sum of Bernoullis."""
    champion = registry.alias("champion")
    records = ledger.records(max(last.until, now - window_length(settings.retrain_quality_window)), now)
    served = np.array([version == champion for version in records.model_version], dtype=bool)
    labelled = served & np.isfinite(records.success) & np.isfinite(records.confidence)
    n = int(labelled.sum())
    if n < settings.promote_min_outcomes or ledger.labelled_count(
            now - window_length(settings.retrain_window), now) < settings.retrain_min_outcomes:
        return []  # not judged yet, or nothing to train on yet: a run would only fail
    confidence, success = records.confidence[labelled], records.success[labelled]
    expected, spread = float(confidence.sum()), float(np.sqrt(np.sum(confidence * (1 - confidence))))
    z = (float(success.sum()) - expected) / spread if spread > 0 else math.inf
    if abs(z) < settings.retrain_shift_z:
        return []
    return [f"shift: {int(success.sum())} successes in {n} outcomes since {last.what} was trained, where the "
            f"champion's confidences expect {expected:.0f} ({z:+.1f} standard errors; "
            f"AI_RETRAIN_SHIFT_Z={settings.retrain_shift_z:g})"]


def train_challenger(settings: Settings, registry: Registry, since: float, now: float, reasons: list[str],
                     config_overrides: dict[str, Any], progress: Callable[[str], None]) -> RetrainResult:
    """Train on the ledger's labelled outcomes since `since`, register the model, name it the challenger."""
    from omni_mev.training.data import DataError, read_ledger
    from omni_mev.training.train import TrainConfig, train

    try:
        dataset = read_ledger(settings.ledger_url or "", since, now)
    except DataError as error:
        raise RetrainFailed(f"{error} (since {_iso(since)}; AI_RETRAIN_MIN_OUTCOMES={settings.retrain_min_outcomes} "
                            "labelled outcomes needed)") from None
    if len(dataset) < settings.retrain_min_outcomes:
        raise RetrainFailed(f"{len(dataset)} labelled outcomes since {_iso(since)}; AI_RETRAIN_MIN_OUTCOMES="
                            f"{settings.retrain_min_outcomes} needed")
    champion = registry.resolve("champion")
    warm_start = champion.path / WEIGHTS_FILE if champion and (champion.path / WEIGHTS_FILE).is_file() else None
    config = TrainConfig(data=settings.ledger_url, init_weights=str(warm_start) if warm_start else None,
                         **config_overrides)
    with tempfile.TemporaryDirectory(prefix="omni-mev-retrain-") as scratch:
        card = train(config, Path(scratch), command=f"{ACTOR} (ledger since {_iso(since)})", progress=progress,
                     dataset=dataset)
        version = registry.register(Path(scratch), user=ACTOR, note="; ".join(reasons))
    registry.assign("challenger", version.version, user=ACTOR, note="trained on recent outcomes")
    registry.record({"event": "retrain", "version": version.version, "user": ACTOR, "triggers": reasons,
                     "rows": len(dataset), "since": _iso(since), "family": card["family"],
                     "warm_start": champion.version if champion is not None and warm_start else None})
    return RetrainResult("trained", f"challenger {version.version} trained on {len(dataset)} outcomes",
                         version.version, triggers=reasons)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def retrain_step(settings: Settings, registry: Registry, *, force: bool = False, since: float | None = None,
                 rules: GateRules | None = None, config_overrides: dict[str, Any] | None = None,
                 now: float | None = None, progress: Callable[[str], None] = log.info) -> RetrainResult:
    """One step of the loop (see the module's docstring), unless another host's or process's run holds the
    retrainer's lock (omni_mev.registry.election): then nothing, and it says who."""
    if settings.ledger_url is None:
        return _failed(registry, "the ledger is off (AI_LEDGER_URL=off): there are no outcomes to learn from", [])
    try:
        with sole_retrainer(settings.model_registry_db or settings.ledger_url, registry.root) as other:
            if other is not None:
                log.info("%s holds the retrainer's lock; this run does nothing", other)
                return RetrainResult("busy", f"{other} is running; this run does nothing")
            return _step(settings, registry, SqlLedger(settings.ledger_url), force=force, since=since,
                         rules=rules or GateRules.from_settings(settings), config_overrides=config_overrides,
                         now=time.time() if now is None else now, progress=progress)
    except (sa.exc.SQLAlchemyError, OSError) as error:  # the lock itself (_step handles its own failures)
        return _failed(registry, f"cannot take the retrainer's lock: {type(error).__name__}: {error}", [])


def _step(settings: Settings, registry: Registry, ledger: SqlLedger, *, force: bool, since: float | None,
          rules: GateRules, config_overrides: dict[str, Any] | None, now: float,
          progress: Callable[[str], None]) -> RetrainResult:
    reasons: list[str] = []
    try:
        champion, challenger = registry.alias("champion"), registry.alias("challenger")
        if champion is None:
            return _failed(registry, f"the registry {registry.root} has no champion", [])
        if challenger is not None and not force:
            comparison = compare_live(ledger, champion, challenger, rules, now=now,
                                      thresholds=own_thresholds(registry, champion, challenger))
            if comparison.outcomes < rules.min_outcomes or comparison.positives < rules.min_positives:
                return RetrainResult("waiting", f"challenger {challenger}: {comparison.outcomes} of "
                                                f"{rules.min_outcomes} labelled outcomes, {comparison.positives} of "
                                                f"{rules.min_positives} successes so far",
                                     challenger, comparison.to_dict())
            if comparison.passed:
                registry.promote(forced=False, user=ACTOR, comparison=comparison.to_dict())
                return RetrainResult("promoted", f"challenger {challenger} passed the gate and serves",
                                     challenger, comparison.to_dict())
            registry.assign("challenger", None, user=ACTOR, note="rejected by the gate")
            registry.record({"event": "reject", "version": challenger, "user": ACTOR,
                             "comparison": comparison.to_dict()})
            return RetrainResult("rejected", f"challenger {challenger} did not beat the champion; retired",
                                 challenger, comparison.to_dict())
        reasons = ["forced: omni-mev retrain --now"] if force else triggers(settings, registry, ledger, now)
        if not reasons:
            return RetrainResult("not_due", "no trigger fired")
        start = since if since is not None else now - window_length(settings.retrain_window)
        return train_challenger(settings, registry, start, now, reasons, config_overrides or {}, progress)
    except RetrainFailed as error:  # expected (too few outcomes, bad data): the reason, no traceback
        return _failed(registry, str(error), reasons)
    except Exception as error:
        log.exception("retraining failed")
        return _failed(registry, f"{type(error).__name__}: {error}", reasons)
    finally:
        ledger.engine.dispose()


def _failed(registry: Registry, reason: str, reasons: list[str]) -> RetrainResult:
    log.error("retraining failed, the champion keeps serving: %s", reason)
    try:
        registry.record({"event": "retrain_failed", "user": ACTOR, "reason": reason, "triggers": reasons})
    except (OSError, sa.exc.SQLAlchemyError) as error:  # the registry's directory or database
        log.error("cannot record the failure in %s: %s", registry.root, str(error).splitlines()[0])
    return RetrainResult("failed", reason, triggers=reasons)

