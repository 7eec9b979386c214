"""The opportunity simulator: determinism, Uniswap V2 mechanics, and labels that make sense."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from omni_mev.features import FEATURE_NAMES
from omni_mev.training.simulate import (
    SimulatorParams,
    activity,
    amount_out,
    compose_pools,
    optimal_input,
    simulate,
)

N = 20_000


@pytest.fixture(scope="module")
def stream():
    return simulate(N, seed=11)


def test_same_seed_same_stream_other_seed_other_stream(stream):
    again = simulate(N, seed=11)
    for field in ("features", "label", "oracle", "timestamp_s"):
        np.testing.assert_array_equal(getattr(stream, field), getattr(again, field))
    other = simulate(N, seed=12)
    assert not np.array_equal(stream.features, other.features)
    assert len(stream) == N


def test_get_amount_out_matches_uniswap_v2_formula():
    r_in, r_out, amount = 1_000_000.0, 2_000_000.0, 5_000.0
    gamma = np.array([[0.997]])
    a, b, c = compose_pools(gamma * r_out, np.array([[r_in]]), gamma, np.array([[True]]))
    expected = amount * 997 * r_out / (r_in * 1000 + amount * 997)
    assert amount_out(np.array([amount]), a, b, c)[0] == pytest.approx(expected, rel=1e-12)


def test_composition_equals_hop_by_hop():
    rng = np.random.default_rng(0)
    reserves_in, reserves_out = rng.uniform(1e5, 1e7, (1, 3)), rng.uniform(1e5, 1e7, (1, 3))
    gamma = np.full((1, 3), 0.997)
    a, b, c = compose_pools(gamma * reserves_out, reserves_in, gamma, np.ones((1, 3), bool))
    x = 12_345.0
    hop = x
    for i in range(3):
        hop = hop * 997 * reserves_out[0, i] / (reserves_in[0, i] * 1000 + hop * 997)
    assert amount_out(np.array([x]), a, b, c)[0] == pytest.approx(hop, rel=1e-12)


def test_optimal_input_maximises_profit():
    a, b, c = np.array([1.02e6]), np.array([1.0e6]), np.array([1.5])
    x = optimal_input(a, b, c)
    profit = amount_out(x, a, b, c) - x
    for factor in (0.8, 0.95, 1.05, 1.25):
        assert profit > amount_out(x * factor, a, b, c) - x * factor
    assert optimal_input(np.array([0.99e6]), b, c)[0] == 0.0  # no edge, no trade


def test_features_in_documented_ranges(stream):
    f = {name: stream.features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    assert set(np.unique(f["route_complexity"])) <= {2, 3, 4, 5, 6}
    assert set(np.unique(f["dex_count"])) <= {1, 2, 3, 4}
    assert np.all(f["dex_count"] <= f["route_complexity"])
    assert np.all((f["time_of_day"] >= 0) & (f["time_of_day"] < 1))
    assert np.all((f["confidence_score"] > 0) & (f["confidence_score"] < 1))
    assert np.all(f["profit_usd"] >= SimulatorParams().min_profit_usd)
    assert np.all((f["input_amount_thousands"] >= 0.1) & (f["input_amount_thousands"] <= 100))
    assert 0.1 < np.median(f["gas_millions"]) < 2.0
    assert 0.05 < stream.label.mean() < 0.95


def test_negative_edge_never_succeeds():
    noisy = simulate(N, seed=3, params=SimulatorParams(scanner_edge_noise=0.01))
    negative = noisy.true_edge <= 0
    assert negative.sum() > 100  # the scanner's stale view reports losers too
    assert noisy.label[negative].max() == 0
    assert noisy.oracle[negative].max() == 0.0
    # ...and they still cost gas when they land.
    assert noisy.pnl_usd[negative].max() <= 0.0


def test_more_competition_lower_success(stream):
    crowded = stream.expected_competitors > np.quantile(stream.expected_competitors, 0.75)
    quiet = stream.expected_competitors < np.quantile(stream.expected_competitors, 0.25)
    assert stream.label[crowded].mean() < stream.label[quiet].mean() - 0.1
    fiercer = simulate(N, seed=11, params=dataclasses.replace(SimulatorParams(), competitors_base=1.4))
    assert fiercer.label.mean() < stream.label.mean() - 0.05


def test_oracle_is_the_true_probability(stream):
    bins = np.clip((stream.oracle * 10).astype(int), 0, 9)
    for b in range(10):
        in_bin = bins == b
        if in_bin.sum() > 500:
            assert abs(stream.label[in_bin].mean() - stream.oracle[in_bin].mean()) < 0.04


def test_confidence_score_is_a_noisy_view_of_the_oracle(stream):
    conf = stream.features[:, FEATURE_NAMES.index("confidence_score")]
    assert np.corrcoef(conf, stream.oracle)[0, 1] > 0.5
    assert not np.allclose(conf, stream.oracle, atol=0.05)


def test_regime_persists_so_history_is_informative(stream):
    lagged = np.corrcoef(stream.regime[:-31], stream.regime[31:])[0, 1]
    assert lagged > 0.9


def test_time_of_day_modulates_activity(stream):
    params = SimulatorParams()
    tod = stream.features[:, FEATURE_NAMES.index("time_of_day")]
    near_peak = np.abs(((tod - params.activity_peak + 0.5) % 1.0) - 0.5) < 0.125
    near_trough = np.abs(((tod - params.activity_peak) % 1.0) - 0.5) < 0.125
    assert near_peak.sum() > 1.5 * near_trough.sum()
    assert activity(params.activity_peak, params) > activity(params.activity_peak + 0.5, params)
