"""What an opportunity the model can judge looks like: its support, and the arithmetic of a trade.

Validation (omni_mev.core.schemas) refuses what cannot be a feature vector at all.
This module flags what can be written down but is not a trade the model can
judge, because nothing like it was in its training data or because its
numbers contradict each other:

- support: `profit_usd`, `profit_ratio`, `gas_millions` and
  `input_amount_thousands` within the range the training data covered, with
  a margin drawn from that data (the model card's `support`, see
  support_bounds). Outside it the LSTM extrapolates, and a vector of zeros,
  for example, scores a confident 1.0. The bounded features (scores and
  times in [0, 1], counts) are covered by validation.
- `profit_consistency`: the expected profit after gas cannot exceed what the
  route itself returns, (profit_ratio - 1) x input, since gas costs are not
  negative: a route that returns nothing yet shows a profit is not a trade.
- `route_consistency`: a route cannot use more DEXes than it has hops
  (dex_count <= route_complexity).
- `history`: any earlier opportunity of the window failing an arithmetic
  check (`profit_consistency`, `route_consistency`): a contradiction in the
  stream. An earlier opportunity merely outside the support does not condemn
  the current one: the network saw such steps only as history, and the
  current opportunity's own support check still applies.
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

from typing import Any

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
# The support's margin beyond the training data's extremes is the width of its own tails: on each side, the
# distance from the extreme to this quantile (docs/model.md). A sample of n in-distribution values puts about
# one new value in n beyond its extreme; the tail's own width is where the next values land.
SUPPORT_TAIL_QUANTILE = 0.001
# Cards written before the support had a margin give only the extremes: their range is widened by this share
# of its width on each side.
RANGE_ONLY_MARGIN = 0.05
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
Support = dict[str, list[float]]  # per supported feature, [low, high]


class Plausibility:
    """The rules, with the support of the model being served (None: its card gave none; card_support).

    Every endpoint checks the values as the request sent them, so an
    opportunity gets the same verdict whichever endpoint scores it.
    """

    def __init__(self, support: Support | None) -> None:
        self._bounds: tuple[tuple[str, int, float, float], ...] = () if support is None else tuple(
            (name, FEATURE_NAMES.index(name), float(support[name][0]), float(support[name][1]))
            for name in SUPPORTED)
        # The same bounds as rows, for many vectors at once.
        self._columns = [index for _, index, _, _ in self._bounds]
        self._low = np.array([low for _, _, low, _ in self._bounds])
        self._high = np.array([high for _, _, _, high in self._bounds])

    def _plausible(self, vector: list[float]) -> bool:
        """Whether one vector passes every vector check: _matrix's rules in plain floats, for the hot path."""
        for _, index, low, high in self._bounds:
            if not low <= vector[index] <= high:
                return False
        return _consistent(vector)

    def of_opportunity(self, features: list[float], history: list[list[float]]) -> Checks:
        """Failed checks of one opportunity and its history (plain floats: cheaper than numpy for one)."""
        if self._plausible(features) and (not history or (all(map(_consistent, history))
                                                           and _stream_plausible(features, history))):
            return ()
        return self.of_batch(np.array([features]), np.array([history]).reshape(1, len(history), len(features)))[0]

    def of_batch(self, current: np.ndarray, past: np.ndarray | None = None) -> list[Checks]:
        """Failed checks of each opportunity: current [n, 8], past [n, steps, 8] (or None), float64."""
        n = len(current)
        streams = None  # (inconsistent steps, disordered, copies) per opportunity, with a history
        if past is not None and past.shape[1]:
            disordered, copies = _stream_failures(current, past)
            streams = (_inconsistent(past.reshape(-1, past.shape[2])).reshape(n, -1).any(axis=1), disordered, copies)
        if self._all_plausible(current) and (streams is None or not any(found.any() for found in streams)):
            return [()] * n  # the common case, in a few array operations
        failed = np.zeros((n, len(CHECKS)), bool)
        failed[:, :_VECTOR_CHECKS] = self._matrix(current)
        if streams is not None:
            for offset, found in enumerate(streams):
                failed[:, _VECTOR_CHECKS + offset] = found
        return [tuple(CHECKS[j] for j in np.flatnonzero(row)) for row in failed]

    def _all_plausible(self, x: np.ndarray) -> bool:
        """Whether every row of x [n, 8] passes every vector check (the rules of _matrix)."""
        if self._columns:
            supported = x[:, self._columns]
            if not ((supported >= self._low) & (supported <= self._high)).all():
                return False
        return not _inconsistent(x).any()

    def _matrix(self, x: np.ndarray) -> np.ndarray:
        """bool [n, _VECTOR_CHECKS]: the vector checks each row of x [n, 8] fails."""
        failed = np.zeros((len(x), _VECTOR_CHECKS), bool)
        if self._columns:
            supported = x[:, self._columns]
            failed[:, :len(SUPPORTED)] = (supported < self._low) | (supported > self._high)
        failed[:, len(SUPPORTED):] = _inconsistent(x)
        return failed


def _consistent(vector: list[float]) -> bool:
    """Whether one vector passes the arithmetic checks (_inconsistent's rules in plain floats)."""
    gross = (vector[_RATIO] - 1.0) * vector[_INPUT] * 1000.0
    return (vector[_PROFIT] <= gross + abs(gross) * PROFIT_TOLERANCE_RELATIVE + PROFIT_TOLERANCE_USD
            and vector[_DEXES] <= vector[_HOPS])


def _inconsistent(x: np.ndarray) -> np.ndarray:
    """bool [n, 2]: whether each row of x [n, 8] fails profit_consistency, route_consistency."""
    gross = (x[:, _RATIO] - 1.0) * x[:, _INPUT] * 1000.0
    return np.stack([x[:, _PROFIT] > gross + np.abs(gross) * PROFIT_TOLERANCE_RELATIVE + PROFIT_TOLERANCE_USD,
                     x[:, _DEXES] > x[:, _HOPS]], axis=1)


def support_bounds(features: np.ndarray) -> dict[str, list[float]]:
    """The support of training data features [n, 8], for the model card: per supported feature, [low, high]
    beyond the extremes by the width of the data's own tails (SUPPORT_TAIL_QUANTILE)."""
    bounds = {}
    for name in SUPPORTED:
        column = features[:, FEATURE_NAMES.index(name)].astype(np.float64)
        low, high = float(column.min()), float(column.max())
        tail_low, tail_high = np.quantile(column, [SUPPORT_TAIL_QUANTILE, 1.0 - SUPPORT_TAIL_QUANTILE])
        bounds[name] = [low - (float(tail_low) - low), high + (high - float(tail_high))]
    return bounds


def range_only_bounds(low: np.ndarray, high: np.ndarray) -> dict[str, list[float]]:
    """The support of a card that gives only the training data's extremes [8] each: widened by
    RANGE_ONLY_MARGIN of the range on each side."""
    bounds = {}
    for name in SUPPORTED:
        index = FEATURE_NAMES.index(name)
        margin = (float(high[index]) - float(low[index])) * RANGE_ONLY_MARGIN
        bounds[name] = [float(low[index]) - margin, float(high[index]) + margin]
    return bounds


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


def card_support(card: dict[str, Any]) -> Support | None:
    """The support a model card gives: its `support`, or for a card written before it had one, its
    `training_range` widened (range_only_bounds); None when it gives neither."""
    try:
        if "support" in card:
            return {name: [float(card["support"][name][0]), float(card["support"][name][1])] for name in SUPPORTED}
        observed = card["training_range"]
        return range_only_bounds(np.array([observed[name][0] for name in FEATURE_NAMES], np.float64),
                                 np.array([observed[name][1] for name in FEATURE_NAMES], np.float64))
    except (KeyError, ValueError, TypeError, IndexError):
        return None
