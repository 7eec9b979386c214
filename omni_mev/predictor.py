"""The service layer: what scoring an opportunity does, with no HTTP in it.

Every scoring endpoint (/predict, /predict/batch, V2 infer) decodes its
request, calls one method here and encodes the result. This module owns the
windowing, the scoring through the fallback chain, the shadow comparison, the
drift counters, the one decision rule and the hand-off to the dispatcher; the
metrics, the cache and the dispatcher sit on the side.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from omni_mev import metrics
from omni_mev.cache import Cache
from omni_mev.config import Settings
from omni_mev.decision import threshold_in_force
from omni_mev.features import FEATURE_NAMES
from omni_mev.ledger.store import Ledger, NullLedger, PredictionRow
from omni_mev.plausibility import Checks, Plausibility, card_support
from omni_mev.runtime.base import ModelRuntime
from omni_mev.runtime.loader import WorkerModels
from omni_mev.trading.dispatcher import Dispatcher, Executing, Judged
from omni_mev.trading.outbox import PendingExecution

log = logging.getLogger(__name__)
SHADOW_SAMPLES = 16

FeatureValues = list[float]


@dataclass(frozen=True)
class Opportunity:
    """One validated opportunity: the vector, its stream's history (oldest first), id and dispatch flag."""

    features: FeatureValues
    history: list[FeatureValues] = field(default_factory=list)
    opportunity_id: str | None = None
    dispatch: bool = True

    def window(self) -> np.ndarray:
        """[1, len(history) + 1, 8] float32, the opportunity itself last."""
        return np.array([[*self.history, self.features]], dtype=np.float32)


@dataclass
class OpportunityBatch:
    """Validated opportunities: current vectors [n, 8], per-item histories, ids and dispatch flags."""

    features: np.ndarray
    histories: list[list[FeatureValues]] | None  # None when no item has a history
    ids: list[str | None]
    dispatch: list[bool]

    def __len__(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class ModelStatus:
    """What this worker serves, or why it serves nothing."""

    kind: str | None
    version: str | None
    problem: str | None = None
    device: str | None = None  # the ONNX Runtime provider or torch device that runs it

    @property
    def ready(self) -> bool:
        return self.kind is not None


@dataclass(frozen=True)
class Scores:
    """Confidences of one or more model runs, and what produced them."""

    confidences: np.ndarray  # float32 [n]
    model_type: str
    model_version: str
    inference_ms: float
    shadow: np.ndarray | None = None
    cached: bool = False


@dataclass(frozen=True)
class Prediction:
    """The answer for one opportunity; `refusal` says why the decision is false whatever the confidence."""

    confidence: float
    decision: bool
    model_type: str
    model_version: str
    inference_ms: float
    opportunity_id: str | None = None
    execution: Executing | None = None
    cached: bool = False
    implausible: Checks = ()
    refusal: str | None = None

    def pending(self) -> list[PendingExecution]:
        """The dispatch whose outcome is still to come, if any."""
        return [self.execution] if isinstance(self.execution, PendingExecution) else []

    def settled(self) -> Prediction:
        """This answer with the dispatch's outcome as it stands now (or `queued`)."""
        if not isinstance(self.execution, PendingExecution):
            return self
        return replace(self, execution=self.execution.settled())


@dataclass(frozen=True)
class BatchPrediction:
    """The answers for a batch, in item order; executions and refusals only for items that have one."""

    confidences: np.ndarray  # float32 [n]
    decisions: np.ndarray  # bool [n]
    model_type: str
    model_version: str
    inference_ms: float
    ids: list[str | None]
    implausible: list[Checks]
    executions: dict[int, Executing] = field(default_factory=dict)
    refusals: dict[int, str] = field(default_factory=dict)

    def pending(self) -> list[PendingExecution]:
        """The dispatches whose outcomes are still to come."""
        return [e for e in self.executions.values() if isinstance(e, PendingExecution)]

    def settled(self) -> BatchPrediction:
        """These answers with the dispatches' outcomes as they stand now (or `queued`)."""
        return replace(self, executions={index: e.settled() if isinstance(e, PendingExecution) else e
                                         for index, e in self.executions.items()})


def refusal_reason(checks: Checks) -> str:
    """Why a positive model decision became false (AI_IMPLAUSIBLE_POLICY=refuse)."""
    return (f"implausible opportunity ({', '.join(checks)}): the model cannot judge it; "
            "decision false whatever the confidence")


def _item(values: np.ndarray | None, index: int) -> float | None:
    return None if values is None else float(values[index])


class Predictor:
    """Scores opportunities with this worker's models and decides on them."""

    def __init__(self, settings: Settings, models: WorkerModels, cache: Cache, dispatcher: Dispatcher,
                 ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.mode = settings.mode
        self.ledger = ledger or NullLedger()
        # The threshold in force: the setting, else the served model's card (a promotion brings its own).
        self.threshold, self.threshold_source = threshold_in_force(settings.threshold, models.card)
        self.refuses_implausible = settings.refuses_implausible
        self.chain = models.chain
        self.shadow = models.shadow
        self.shadow_version = models.shadow.version if models.shadow is not None else None
        self.card = models.card
        self.cache = cache
        self.dispatcher = dispatcher
        self.plausibility = Plausibility(card_support(models.card))
        self._range = models.training_range
        if self._range is not None:
            self._low, self._high = self._range[0].tolist(), self._range[1].tolist()

    # What serves

    @property
    def serving(self) -> ModelRuntime | None:
        """The runtime answering requests in this worker."""
        return self.chain.active

    def status(self) -> ModelStatus:
        """The serving model, or the reason there is none."""
        runtime = self.chain.active
        if runtime is None:
            return ModelStatus(None, None, self.chain.public_reason)
        return ModelStatus(runtime.kind, runtime.version, device=runtime.device)

    # The one decision rule, for one opportunity and for many

    def decide_one(self, confidence: float, implausible: Checks) -> tuple[bool, bool]:
        """(decision, refused): the model's float against the threshold, unless an implausible opportunity
        is refused by policy; `refused` marks a positive model decision on an implausible opportunity."""
        approved = confidence >= self.threshold
        refused = approved and bool(implausible)
        decision = approved and not (refused and self.refuses_implausible)
        metrics.count_decision(decision, confidence)
        if implausible:
            metrics.count_implausible(implausible, int(refused))
        return decision, refused

    def decide(self, confidences: np.ndarray, implausible: list[Checks]) -> tuple[np.ndarray, np.ndarray]:
        """decide_one() for every item: (decisions, refused) as bool arrays."""
        approved = confidences.astype(np.float64) >= self.threshold
        if not any(implausible):  # the common case, without a pass over the items
            metrics.count_decisions(approved, confidences)
            return approved, np.zeros_like(approved)
        refused = approved & np.fromiter(map(bool, implausible), bool, len(implausible))
        decisions = approved & ~refused if self.refuses_implausible else approved
        metrics.count_decisions(decisions, confidences)
        metrics.count_implausible((check for checks in implausible for check in checks), int(refused.sum()))
        return decisions, refused

    # Endpoints' work

    def predict(self, opportunity: Opportunity, received_at: float | None = None,
                arrived_at: float | None = None) -> Prediction:
        """One opportunity: check, score (through the cache when enabled), decide, hand to the dispatcher.
        `received_at`: when the request reached the proxy in front, if known; `arrived_at`: when it reached this
        process. Its orders' deadline counts from the earlier."""
        implausible = self.plausibility.of_opportunity(opportunity.features, opportunity.history)
        window = opportunity.window()
        scores = self._score_one(window)
        confidence = float(scores.confidences[0])
        decision, refused = self.decide_one(confidence, implausible)
        shadow = None if scores.shadow is None else float(scores.shadow[0])
        if opportunity.opportunity_id is not None:
            self.ledger.record([self._row(opportunity.opportunity_id, "predict", scores, confidence, shadow, decision,
                                          implausible, window[0])])
        judged = Judged(opportunity.opportunity_id, opportunity.features, opportunity.dispatch, confidence,
                        scores.model_version, self.threshold, shadow, implausible, received_at, arrived_at)
        refusal = self._refuse(judged) if refused and not decision else None
        return Prediction(confidence, decision, scores.model_type, scores.model_version, scores.inference_ms,
                          opportunity.opportunity_id, self.dispatcher.after_decision(judged, decision),
                          scores.cached, implausible, refusal)

    def predict_batch(self, batch: OpportunityBatch, received_at: float | None = None,
                      arrived_at: float | None = None) -> BatchPrediction:
        """Many opportunities: one model run per distinct history length, answers in item order; `received_at`
        and `arrived_at` as for predict()."""
        scores, implausible = self._score_windows(batch)
        decisions, refused = self.decide(scores.confidences, implausible)
        self._record_batch(batch, scores, decisions, implausible)
        refusals: dict[int, str] = {}
        approved: dict[int, Judged] = {}
        for index in np.flatnonzero(decisions | refused).tolist():
            shadow = _item(scores.shadow, index)
            judged = Judged(batch.ids[index], batch.features[index].tolist(), batch.dispatch[index],
                            float(scores.confidences[index]), scores.model_version, self.threshold, shadow,
                            implausible[index], received_at, arrived_at)
            if decisions[index]:
                approved[index] = judged
            else:
                refusals[index] = self._refuse(judged)
        # All approved items at once: LIVE sends them concurrently, under one wait for the whole batch.
        executions = dict(zip(approved, self.dispatcher.after_decisions(list(approved.values()),
                                                                        self.settings.batch_dispatch_wait_s)))
        return BatchPrediction(scores.confidences, decisions, scores.model_type, scores.model_version,
                               scores.inference_ms, batch.ids, implausible, executions, refusals)

    def infer(self, rows: np.ndarray, ids: list[str] | None = None) -> tuple[Scores, np.ndarray, list[Checks]]:
        """A tensor [batch, seq, 8] of float64 values as sent (the V2 protocol), with optional opportunity ids:
        scores, decisions, failed checks; nothing is dispatched."""
        windows = rows.astype(np.float32)
        scores = self.score(windows)
        implausible = self.plausibility.of_batch(rows[:, -1, :], rows[:, :-1, :])
        decisions, _ = self.decide(scores.confidences, implausible)
        if ids is not None:
            self.ledger.record([self._row(opportunity_id, "v2", scores, float(scores.confidences[i]),
                                          _item(scores.shadow, i), bool(decisions[i]), implausible[i], windows[i])
                                for i, opportunity_id in enumerate(ids)])
        return scores, decisions, implausible

    def _row(self, opportunity_id: str, endpoint: str, scores: Scores, confidence: float, shadow: float | None,
             decision: bool, implausible: Checks, window: np.ndarray) -> PredictionRow:
        """The ledger's record of one judged opportunity; window [steps, 8] float32 as the model read it."""
        return PredictionRow(opportunity_id, time.time(), endpoint, self.mode, scores.model_type,
                             scores.model_version, confidence, shadow, self.shadow_version if shadow is not None
                             else None, self.threshold, decision, ",".join(implausible) or None, len(window),
                             window.astype("<f4", copy=False).tobytes())

    def _record_batch(self, batch: OpportunityBatch, scores: Scores, decisions: np.ndarray,
                      implausible: list[Checks]) -> None:
        rows = []
        for index, opportunity_id in enumerate(batch.ids):
            if opportunity_id is None:
                continue
            history = batch.histories[index] if batch.histories is not None else []
            window = np.array([*history, batch.features[index]], dtype=np.float32)
            rows.append(self._row(opportunity_id, "batch", scores, float(scores.confidences[index]),
                                  _item(scores.shadow, index), bool(decisions[index]), implausible[index], window))
        if rows:
            self.ledger.record(rows)

    def _refuse(self, judged: Judged) -> str:
        """A positive model decision refused by policy: recorded when it could have been acted on."""
        if judged.dispatch and judged.opportunity_id is not None:
            self.dispatcher.refuse(judged)
        return refusal_reason(judged.implausible)

    # Scoring

    def score(self, windows: np.ndarray) -> Scores:
        """Confidences for windows [batch, seq, 8] float32, with the model metrics recorded."""
        self._count_drift(windows[:, -1, :])
        return self._recorded(self._run(windows))

    def _run(self, windows: np.ndarray) -> Scores:
        started = time.perf_counter()
        confidences, runtime = self.chain.predict(windows)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        metrics.observe_inference(elapsed_ms)
        shadow = self._shadow(windows, confidences) if self.shadow is not None else None
        return Scores(confidences, runtime.kind, runtime.version or "unknown", elapsed_ms, shadow)

    def _score_one(self, window: np.ndarray) -> Scores:
        """score() for a single window [1, seq, 8], through the Redis cache when enabled."""
        serving = self.chain.active
        if not self.cache.caching or serving is None:
            return self.score(window)
        self._count_drift(window[:, -1, :])
        version = serving.version or "unknown"
        hit = self.cache.get_prediction(version, window)
        if hit is not None:
            return self._recorded(Scores(np.array([hit], np.float32), serving.kind, version, 0.0, cached=True))
        scores = self._recorded(self._run(window))
        if scores.model_version == serving.version:
            self.cache.put_prediction(scores.model_version, window, float(scores.confidences[0]))
        return scores

    def _score_windows(self, batch: OpportunityBatch) -> tuple[Scores, list[Checks]]:
        """Windows grouped by history length: items of one length are checked and run together."""
        current = batch.features.astype(np.float32)[:, None, :]
        if batch.histories is None:
            return self.score(current), self.plausibility.of_batch(batch.features)
        by_length: dict[int, list[int]] = {}
        for index, history in enumerate(batch.histories):
            by_length.setdefault(len(history), []).append(index)
        confidences = np.empty(len(batch), dtype=np.float32)
        shadow: np.ndarray | None = np.empty(len(batch), dtype=np.float32) if self.shadow is not None else None
        implausible: list[Checks] = [()] * len(batch)
        elapsed = 0.0
        scores: Scores | None = None
        for length, indices in by_length.items():
            windows = current[indices]
            past = np.array([batch.histories[i] for i in indices], dtype=np.float64).reshape(len(indices), length,
                                                                                            current.shape[2])
            for index, checks in zip(indices, self.plausibility.of_batch(batch.features[indices], past)):
                implausible[index] = checks
            if length:
                windows = np.concatenate([past.astype(np.float32), windows], axis=1)
            scores = self.score(windows)
            confidences[indices] = scores.confidences
            if shadow is not None and scores.shadow is not None:
                shadow[indices] = scores.shadow
            elif scores.shadow is None:
                shadow = None  # the shadow failed on a group: no comparison for this batch
            elapsed += scores.inference_ms
        assert scores is not None  # a batch has at least one item
        return Scores(confidences, scores.model_type, scores.model_version, elapsed, shadow), implausible

    def _shadow(self, windows: np.ndarray, served: np.ndarray) -> np.ndarray | None:
        """Score with the shadow model and compare; its failures never reach the client."""
        assert self.shadow is not None  # called only with a shadow model
        try:
            shadow = self.shadow.predict(windows)
        except Exception:
            log.exception("shadow model failed")
            metrics.SHADOW_ERRORS.inc()
            return None
        threshold = self.threshold
        agree = int(((shadow >= threshold) == (served >= threshold)).sum())
        # Every item of small requests; an even sample of large batches.
        step = max(1, len(served) // SHADOW_SAMPLES)
        metrics.count_shadow(agree, len(served) - agree, (shadow[::step] - served[::step])[:SHADOW_SAMPLES])
        return shadow

    def _recorded(self, scores: Scores) -> Scores:
        last = float(scores.confidences[-1])
        metrics.record_confidence(last)
        self.cache.record_last(last)
        return scores

    def _count_drift(self, current: np.ndarray) -> None:
        """Count inputs outside the training data's observed range, per feature."""
        if self._range is None:
            return
        if len(current) == 1:  # one vector: plain comparisons beat numpy's call overhead
            row = current[0].tolist()
            if all(a <= v <= b for a, v, b in zip(self._low, row, self._high)):
                return
        lo, hi = self._range
        outside = (current < lo) | (current > hi)
        if outside.any():  # rare: count per feature only then
            counts = outside.sum(axis=0)
            metrics.count_out_of_range({FEATURE_NAMES[i]: int(counts[i]) for i in np.flatnonzero(counts)})

