"""What an opportunity the model can judge looks like: its support, and the arithmetic of a trade.

Validation (omni_mev.schemas) refuses what cannot be a feature vector at all.
This module flags what can be written down but is not a trade the model can
judge, because nothing like it was in its training data or because its
numbers contradict each other:

- support: `profit_usd`, `profit_ratio`, `gas_millions` and
  `input_amount_thousands` within the range the training data covered (the
  model card's `training_range`). Outside it the LSTM extrapolates, and a
  vector of zeros, for example, scores a confident 1.0. The bounded features
  (scores and times in [0, 1], counts) are covered by validation.
- `profit_consistency`: the expected profit after gas cannot exceed what the
  route itself returns, (profit_ratio - 1) x input, since gas costs are not
  negative: a route that returns nothing yet shows a profit is not a trade.
- `route_consistency`: a route cannot use more DEXes than it has hops
  (dex_count <= route_complexity).
- `history`: any earlier opportunity of the window failing a check above.
- `history_order`: a history is the same stream's earlier opportunities,
  oldest first, so its `time_of_day` runs forward. Read step by step with the
  wrap at midnight, the window may span at most MAX_WINDOW_SPAN_DAYS (12 h);
  a step back of up to TIME_JITTER_DAYS (60 s) is clock jitter, any larger
  step back reads as most of a day forward and fails the check.
- `history_copies`: a history whose every row is the current opportunity
  itself is no stream at all.

docs/model.md states the rules and the tolerances. In LIVE mode an implausible
opportunity is never dispatched; AI_IMPLAUSIBLE_POLICY decides whether it is
refused outright (decision false) or scored and flagged.
"""
from __future__ import annotations

import numpy as np

from omni_mev.features import FEATURE_NAMES

SUPPORTED = ("profit_usd", "profit_ratio", "gas_millions", "input_amount_thousands")
PROFIT_CONSISTENCY = "profit_consistency"
ROUTE_CONSISTENCY = "route_consistency"
HISTORY = "history"
HISTORY_ORDER = "history_order"
HISTORY_COPIES = "history_copies"
CHECKS = (*SUPPORTED, PROFIT_CONSISTENCY, ROUTE_CONSISTENCY, HISTORY, HISTORY_ORDER, HISTORY_COPIES)
_VECTOR_CHECKS = len(CHECKS) - 3  # the checks of one vector; then the three of the window
# A window of a stream's recent opportunities spans minutes, not half a day;
# scanners' clocks may disagree by seconds.
MAX_WINDOW_SPAN_DAYS = 0.5
TIME_JITTER_DAYS = 60.0 / 86_400.0
# The features arrive as float32 in the model; profit may exceed the gross by
# rounding (and by cents of fees a scanner rounds away) but not by more.
PROFIT_TOLERANCE_RELATIVE = 1e-3
PROFIT_TOLERANCE_USD = 0.01

_PROFIT, _RATIO, _HOPS, _GAS, _, _TIME, _DEXES, _INPUT = range(len(FEATURE_NAMES))

Checks = tuple[str, ...]


class Plausibility:
    """The rules, with the support of the model being served (None: its card gave none).

    Every endpoint checks the values as the request sent them, so an
    opportunity gets the same verdict whichever endpoint scores it.
    """

    def __init__(self, support: tuple[np.ndarray, np.ndarray] | None) -> None:
        self._bounds: tuple[tuple[str, int, float, float], ...] = () if support is None else tuple(
            (name, FEATURE_NAMES.index(name), float(support[0][FEATURE_NAMES.index(name)]),
             float(support[1][FEATURE_NAMES.index(name)])) for name in SUPPORTED)
        # The same bounds as rows, for many vectors at once.
        self._columns = [index for _, index, _, _ in self._bounds]
        self._low = np.array([low for _, _, low, _ in self._bounds])
        self._high = np.array([high for _, _, _, high in self._bounds])

    def _plausible(self, vector: list[float]) -> bool:
        """Whether one vector passes every vector check: _matrix's rules in plain floats, for the hot path."""
        for _, index, low, high in self._bounds:
            if not low <= vector[index] <= high:
                return False
        gross = (vector[_RATIO] - 1.0) * vector[_INPUT] * 1000.0
        return (vector[_PROFIT] <= gross + abs(gross) * PROFIT_TOLERANCE_RELATIVE + PROFIT_TOLERANCE_USD
                and vector[_DEXES] <= vector[_HOPS])

    def of_opportunity(self, features: list[float], history: list[list[float]]) -> Checks:
        """Failed checks of one opportunity and its history (plain floats: cheaper than numpy for one)."""
        if self._plausible(features) and (not history or (all(map(self._plausible, history))
                                                           and _stream_plausible(features, history))):
            return ()
        return self.of_batch(np.array([features]), np.array([history]).reshape(1, len(history), len(features)))[0]

    def of_batch(self, current: np.ndarray, past: np.ndarray | None = None) -> list[Checks]:
        """Failed checks of each opportunity: current [n, 8], past [n, steps, 8] (or None), float64."""
        n = len(current)
        history = past.reshape(-1, past.shape[2]) if past is not None and past.shape[1] else None
        disordered = copies = None
        if history is not None:
            disordered, copies = _stream_failures(current, past)
        if self._all_plausible(current) and (history is None or (self._all_plausible(history)
                                                                 and not disordered.any() and not copies.any())):
            return [()] * n  # the common case, in a few array operations
        failed = np.zeros((n, len(CHECKS)), bool)
        failed[:, :_VECTOR_CHECKS] = self._matrix(current)
        if history is not None:
            failed[:, _VECTOR_CHECKS] = self._matrix(history).reshape(n, -1).any(axis=1)
            failed[:, _VECTOR_CHECKS + 1] = disordered
            failed[:, _VECTOR_CHECKS + 2] = copies
        return [tuple(CHECKS[j] for j in np.flatnonzero(row)) for row in failed]

    def _all_plausible(self, x: np.ndarray) -> bool:
        """Whether every row of x [n, 8] passes every vector check (the rules of _matrix)."""
        if self._columns:
            supported = x[:, self._columns]
            if not ((supported >= self._low) & (supported <= self._high)).all():
                return False
        gross = (x[:, _RATIO] - 1.0) * x[:, _INPUT] * 1000.0
        return bool((x[:, _PROFIT] <= gross + np.abs(gross) * PROFIT_TOLERANCE_RELATIVE + PROFIT_TOLERANCE_USD).all()
                    and (x[:, _DEXES] <= x[:, _HOPS]).all())

    def _matrix(self, x: np.ndarray) -> np.ndarray:
        """bool [n, _VECTOR_CHECKS]: the vector checks each row of x [n, 8] fails."""
        failed = np.zeros((len(x), _VECTOR_CHECKS), bool)
        if self._columns:
            supported = x[:, self._columns]
            failed[:, :len(SUPPORTED)] = (supported < self._low) | (supported > self._high)
        gross = (x[:, _RATIO] - 1.0) * x[:, _INPUT] * 1000.0
        failed[:, len(SUPPORTED)] = x[:, _PROFIT] > gross + np.abs(gross) * PROFIT_TOLERANCE_RELATIVE + PROFIT_TOLERANCE_USD
        failed[:, len(SUPPORTED) + 1] = x[:, _DEXES] > x[:, _HOPS]
        return failed


def _stream_plausible(features: list[float], history: list[list[float]]) -> bool:
    """Whether a non-empty history reads as the stream before `features` (_stream_failures for one window)."""
    times = [row[_TIME] for row in history]
    times.append(features[_TIME])
    span = 0.0
    for earlier, later in zip(times, times[1:]):
        step = (later - earlier) % 1.0
        if step <= 1.0 - TIME_JITTER_DAYS:
            span += step
    return span <= MAX_WINDOW_SPAN_DAYS and not all(row == features for row in history)


def _stream_failures(current: np.ndarray, past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(history_order, history_copies) as bool [n] for windows whose history past [n, steps >= 1, 8] precedes
    current [n, 8]."""
    times = np.concatenate([past[:, :, _TIME], current[:, None, _TIME]], axis=1)
    steps = np.diff(times, axis=1) % 1.0
    span = np.where(steps > 1.0 - TIME_JITTER_DAYS, 0.0, steps).sum(axis=1)
    return span > MAX_WINDOW_SPAN_DAYS, (past == current[:, None, :]).all(axis=(1, 2))
