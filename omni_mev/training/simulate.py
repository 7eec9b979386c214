"""Seeded simulator of a DEX arbitrage opportunity stream with ground-truth outcomes.

Every parameter below is listed with its source (or marked as an assumption) in
docs/model.md. The simulator returns, besides the 8 API features and the label,
the true success probability of each opportunity (the oracle): the best any
model could do, because it knows the hidden state the features only hint at.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from omni_mev.features import FEATURE_NAMES

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class SimulatorParams:
    """Parameters of the opportunity stream; see docs/model.md for sources."""

    # Stream and time of day
    mean_interarrival_s: float = 6.0
    activity_amplitude: float = 0.6
    activity_peak: float = 14.0 / 24.0  # EU/US overlap, UTC

    # Hidden competition regime: an Ornstein-Uhlenbeck process on log intensity
    regime_halflife_s: float = 3600.0
    regime_sigma: float = 1.0
    regime_arrival_elasticity: float = 0.5  # busy markets surface more opportunities
    regime_edge_elasticity: float = 0.3  # ... with larger mispricings

    # Gas price and native-token price: slowly moving regimes
    gas_price_gwei_median: float = 5.0
    gas_price_sigma: float = 0.35
    gas_price_halflife_s: float = 6 * 3600.0
    native_usd_start: float = 600.0
    native_daily_volatility: float = 0.04

    # Pools (constant product, Uniswap V2 getAmountOut)
    pool_tvl_median_usd: float = 400_000.0
    pool_tvl_sigma: float = 1.2
    v3_hop_share: float = 0.4
    v3_depth_multiplier: float = 4.0  # concentrated liquidity seen as a deeper V2 pool
    v3_low_fee_share: float = 0.5
    fee_v2: float = 0.003
    fee_v3_low: float = 0.0005

    # Mispricing edge after fees (log of the cycle's marginal rate)
    edge_offset: float = -0.002
    edge_mean: float = 0.010
    scanner_edge_noise: float = 0.001  # stale reserves in the scanner's view
    input_noise: float = 0.1  # how far the bot's size strays from the optimum
    min_input_usd: float = 100.0
    max_input_usd: float = 100_000.0
    min_profit_usd: float = 0.25  # the scanner drops anything below this

    # Gas: Uniswap router heuristics plus an arbitrage contract's overhead
    gas_v2_base: float = 135_000.0
    gas_v2_extra_hop: float = 50_000.0
    gas_v3_per_hop: float = 80_000.0
    gas_v3_init_tick: float = 31_000.0
    gas_contract_overhead: float = 60_000.0
    gas_per_extra_dex: float = 10_000.0
    gas_estimate_noise: float = 0.05
    gas_used_fraction: float = 0.9  # estimators add a safety margin
    priority_fee_share: float = 0.2  # of the expected gross profit, bid in the gas auction
    revert_gas_fraction: float = 0.5  # a revert stops early and burns part of the gas

    # Competition and inclusion
    competitors_base: float = 0.35
    competitors_profit_ref_usd: float = 20.0
    competitors_profit_elasticity: float = 0.5
    land_probability: float = 0.97
    delay_extra_blocks_mean: float = 0.6
    max_delay_blocks: int = 6
    edge_decay_per_block: float = 0.12

    # Scanner's own confidence: a noisy view of the success probability it believes in
    confidence_logit_noise: float = 0.5
    # The competition the scanner's confidence assumes (None: the true values).
    # A regime shift that the scanner has not learnt yet leaves these at the old
    # values while the competition changes (docs/model.md, the regime shift).
    scanner_competitors_base: float | None = None
    scanner_competitors_profit_elasticity: float | None = None


@dataclass
class OpportunityStream:
    """A simulated stream: API features, outcomes and the hidden state behind them."""

    features: np.ndarray  # [n, 8] float32, FEATURE_NAMES order
    label: np.ndarray  # [n] int8: 1 = landed and realised profit > 0 after gas
    oracle: np.ndarray  # [n] float64: true success probability
    timestamp_s: np.ndarray  # [n] seconds since the stream started
    regime: np.ndarray  # [n] hidden competition regime
    true_edge: np.ndarray  # [n] log marginal rate of the cycle after fees
    expected_competitors: np.ndarray  # [n]
    pnl_usd: np.ndarray  # [n] realised profit, reverted gas included
    seed: int = 0
    params: SimulatorParams = field(default_factory=SimulatorParams)

    def __len__(self) -> int:
        return len(self.label)

    def slice(self, start: int, stop: int) -> OpportunityStream:
        """Opportunities start..stop-1 of the stream, in time order."""
        arrays = {name: getattr(self, name)[start:stop] for name in _PER_OPPORTUNITY}
        return OpportunityStream(**arrays, seed=self.seed, params=self.params)

    def describe(self) -> dict:
        """Summary figures for the model card."""
        return {
            "seed": self.seed,
            "opportunities": len(self),
            "days": float(self.timestamp_s[-1] / SECONDS_PER_DAY),
            "success_rate": float(self.label.mean()),
            "mean_oracle": float(self.oracle.mean()),
            "negative_true_edge_share": float((self.true_edge <= 0).mean()),
            "params": asdict(self.params),
        }


_PER_OPPORTUNITY = (
    "features", "label", "oracle", "timestamp_s", "regime", "true_edge", "expected_competitors", "pnl_usd",
)


def activity(time_of_day: np.ndarray | float, params: SimulatorParams) -> np.ndarray:
    """Relative market activity over the day (1 on average)."""
    phase = 2.0 * np.pi * (np.asarray(time_of_day) - params.activity_peak)
    return 1.0 + params.activity_amplitude * np.cos(phase)


def _ou_step(value: float, dt: float, halflife: float, sigma: float, shock: float) -> float:
    """Exact Ornstein-Uhlenbeck step towards 0 with stationary deviation sigma."""
    decay = math.exp(-math.log(2.0) * dt / halflife)
    return value * decay + sigma * math.sqrt(1.0 - decay * decay) * shock


def _timeline(n: int, params: SimulatorParams, rng: np.random.Generator):
    """Arrival times and the slowly moving regimes that they carry."""
    exp_draws = rng.exponential(size=n)
    shocks = rng.standard_normal(size=(n, 3))
    t = np.empty(n)
    regime = np.empty(n)
    log_gas = np.empty(n)
    log_native = np.empty(n)
    now = rng.uniform(0.0, SECONDS_PER_DAY)
    z = params.regime_sigma * shocks[0, 0]
    g = params.gas_price_sigma * shocks[0, 1]
    v = math.log(params.native_usd_start)
    daily_vol = params.native_daily_volatility
    for i in range(n):
        rate = float(activity((now % SECONDS_PER_DAY) / SECONDS_PER_DAY, params))
        rate *= math.exp(params.regime_arrival_elasticity * z)
        dt = exp_draws[i] * params.mean_interarrival_s / rate
        now += dt
        z = _ou_step(z, dt, params.regime_halflife_s, params.regime_sigma, shocks[i, 0])
        g = _ou_step(g, dt, params.gas_price_halflife_s, params.gas_price_sigma, shocks[i, 1])
        v += daily_vol * math.sqrt(dt / SECONDS_PER_DAY) * shocks[i, 2]
        t[i], regime[i], log_gas[i], log_native[i] = now, z, g, v
    gas_price_gwei = params.gas_price_gwei_median * np.exp(log_gas)
    return t, regime, gas_price_gwei, np.exp(log_native)


def _route(n: int, params: SimulatorParams, rng: np.random.Generator):
    """Route shape: tokens in the cycle (= hops), DEXes used, V3 hops."""
    hops = rng.choice([2, 3, 4, 5, 6], size=n, p=[0.35, 0.35, 0.15, 0.10, 0.05])
    max_dex = np.minimum(hops, 4)
    # A two-token cycle needs two venues; longer cycles may stay on one DEX.
    min_dex = np.where(hops == 2, 2, 1)
    dex_count = min_dex + np.floor(rng.uniform(size=n) * (max_dex - min_dex + 1)).astype(int)
    hop_index = np.arange(6)[None, :]
    active = hop_index < hops[:, None]
    is_v3 = (rng.uniform(size=(n, 6)) < params.v3_hop_share) & active
    return hops, dex_count, active, is_v3


def compose_pools(a: np.ndarray, b: np.ndarray, c: np.ndarray, active: np.ndarray):
    """Compose per-hop maps x -> a*x/(b + c*x) along the route into one such map.

    Uniswap V2's getAmountOut is out = in*997*R_out / (R_in*1000 + in*997), i.e.
    a = gamma*R_out, b = R_in, c = gamma. Such maps are closed under composition:
    g(f(x)) has A = a1*a2, B = b1*b2, C = b2*c1 + c2*a1.
    """
    big_a, big_b, big_c = a[:, 0].copy(), b[:, 0].copy(), c[:, 0].copy()
    for hop in range(1, a.shape[1]):
        on = active[:, hop]
        new_a = big_a * a[:, hop]
        new_b = big_b * b[:, hop]
        new_c = b[:, hop] * big_c + c[:, hop] * big_a
        big_a = np.where(on, new_a, big_a)
        big_b = np.where(on, new_b, big_b)
        big_c = np.where(on, new_c, big_c)
    return big_a, big_b, big_c


def amount_out(x: np.ndarray, big_a: np.ndarray, big_b: np.ndarray, big_c: np.ndarray) -> np.ndarray:
    """Output of the composed route for input x."""
    return big_a * x / (big_b + big_c * x)


def optimal_input(big_a: np.ndarray, big_b: np.ndarray, big_c: np.ndarray) -> np.ndarray:
    """Input maximising amount_out(x) - x: where the marginal rate falls to 1."""
    return np.maximum(np.sqrt(big_a * big_b) - big_b, 0.0) / big_c


def _win_probability(expected_rivals: np.ndarray) -> np.ndarray:
    """P(win) against Poisson(expected_rivals) equally matched rivals: E[1/(n+1)]."""
    return -np.expm1(-expected_rivals) / expected_rivals


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _delay_pmf(mean_extra: np.ndarray, max_delay: int) -> np.ndarray:
    """P(delay = d blocks), d = 1..max_delay: 1 + Poisson, truncated."""
    k = np.arange(max_delay)
    log_fact = np.array([math.lgamma(j + 1.0) for j in k])
    lam = mean_extra[:, None]
    pmf = np.exp(k[None, :] * np.log(lam) - lam - log_fact[None, :])
    return pmf / pmf.sum(axis=1, keepdims=True)


def simulate(n: int, seed: int = 0, params: SimulatorParams | None = None) -> OpportunityStream:
    """Simulate the first n opportunities the scanner reports; same seed, same stream."""
    params = params or SimulatorParams()
    candidates = int(n * 1.5) + 64
    while True:
        stream = _simulate_candidates(candidates, seed, params)
        if len(stream) >= n:
            return stream.slice(0, n)
        candidates *= 2


def _simulate_candidates(n: int, seed: int, params: SimulatorParams) -> OpportunityStream:
    """Simulate n candidate opportunities and keep those the scanner reports."""
    rng = np.random.default_rng(seed)
    t, regime, gas_price_gwei, native_usd = _timeline(n, params, rng)
    time_of_day = (t % SECONDS_PER_DAY) / SECONDS_PER_DAY
    hops, dex_count, active, is_v3 = _route(n, params, rng)

    # Pools: log-normal depth, V3 hops deeper and sometimes on the 0.05% tier.
    depth = params.pool_tvl_median_usd * np.exp(params.pool_tvl_sigma * rng.standard_normal((n, 6)))
    depth = np.where(is_v3, depth * params.v3_depth_multiplier, depth)
    low_fee = is_v3 & (rng.uniform(size=(n, 6)) < params.v3_low_fee_share)
    gamma = 1.0 - np.where(low_fee, params.fee_v3_low, params.fee_v2)

    # The cycle's marginal rate after fees, exp(edge), split across hops.
    edge_scale = params.edge_mean * np.exp(params.regime_edge_elasticity * regime)
    true_edge = params.edge_offset + rng.exponential(edge_scale)
    log_gamma = np.where(active, np.log(gamma), 0.0).sum(axis=1)
    weights = rng.dirichlet(np.ones(6), size=n) * active
    weights /= weights.sum(axis=1, keepdims=True)
    hop_mispricing = (true_edge - log_gamma)[:, None] * weights
    a = gamma * depth * np.exp(hop_mispricing)
    big_a, big_b, big_c = compose_pools(a, depth, gamma, active)

    # The scanner sees slightly stale reserves and sizes the trade near its optimum.
    scan_error = params.scanner_edge_noise * rng.standard_normal(n)
    seen_a = big_a * np.exp(scan_error)
    x_opt = optimal_input(seen_a, big_b, big_c)
    x = x_opt * np.exp(params.input_noise * rng.standard_normal(n))
    x = np.clip(x, params.min_input_usd, params.max_input_usd)
    seen_out = amount_out(x, seen_a, big_b, big_c)

    # Gas: V2 router heuristic for the V2 hops, V3 per-hop cost, contract overhead.
    n_v3 = is_v3.sum(axis=1)
    n_v2 = hops - n_v3
    gas_units = (
        params.gas_contract_overhead
        + np.where(n_v2 > 0, params.gas_v2_base + params.gas_v2_extra_hop * np.maximum(n_v2 - 1, 0), 0.0)
        + n_v3 * params.gas_v3_per_hop
        + rng.poisson(1.0, size=n) * params.gas_v3_init_tick * (n_v3 > 0)
        + params.gas_per_extra_dex * (dex_count - 1)
    )
    gas_units *= np.exp(params.gas_estimate_noise * rng.standard_normal(n))
    usd_per_gas = gas_price_gwei * 1e-9 * native_usd
    gas_cost_estimate = gas_units * usd_per_gas
    profit_usd = seen_out - x - gas_cost_estimate

    # Competition grows with the prize and the hidden regime (persistent in time).
    true_out = amount_out(x, big_a, big_b, big_c)
    prize = np.maximum(true_out - x, 0.01)
    tod_activity = activity(time_of_day, params)

    def expected_rivals(base: float, elasticity: float) -> np.ndarray:
        """Rivals expected for each opportunity at a competition level: more for bigger prizes, busier times."""
        scale = (prize / params.competitors_profit_ref_usd) ** elasticity
        return base * np.exp(regime) * np.sqrt(tod_activity) * scale

    competitors = expected_rivals(params.competitors_base, params.competitors_profit_elasticity)

    # Inclusion delay grows with congestion. Meanwhile other traders close the gap:
    # a fraction F = exp(-kappa * d * G), G ~ Exp(1), of the edge survives d blocks,
    # so the edge only shrinks and a negative edge never turns into a profit.
    congestion = gas_price_gwei / params.gas_price_gwei_median
    delay_pmf = _delay_pmf(params.delay_extra_blocks_mean * congestion, params.max_delay_blocks)
    delays = np.arange(1, params.max_delay_blocks + 1)[None, :]
    kappa = params.edge_decay_per_block
    # The bot bids a share of the expected gross profit as priority fee to win the
    # gas auction; a landed transaction pays it whether it wins or reverts.
    gas_paid = params.gas_used_fraction * gas_units * usd_per_gas
    gas_paid += params.priority_fee_share * np.maximum(seen_out - x, 0.0)
    # Scaling the last pool's output by s scales A alone: output becomes s * true_out.
    # Break-even needs log s > needed, and log s = true_edge * (F - 1).
    needed = np.log((x + gas_paid) / true_out)
    with np.errstate(divide="ignore", invalid="ignore"):
        survive_needed = np.where(true_edge > 0, 1.0 + needed / true_edge, np.inf)
    q = np.clip(survive_needed, 0.0, 1.0)[:, None]
    profitable_given_delay = 1.0 - q ** (1.0 / (kappa * delays))
    profitable = (delay_pmf * profitable_given_delay).sum(axis=1)
    # With n equally matched rivals the bot wins 1/(n+1); n ~ Poisson(competitors).
    oracle = params.land_probability * _win_probability(competitors) * profitable
    believed = oracle
    if params.scanner_competitors_base is not None or params.scanner_competitors_profit_elasticity is not None:
        believed = params.land_probability * _win_probability(expected_rivals(
            _given(params.scanner_competitors_base, params.competitors_base),
            _given(params.scanner_competitors_profit_elasticity, params.competitors_profit_elasticity))) * profitable

    # Outcomes drawn from the same mechanics.
    lands = rng.uniform(size=n) < params.land_probability
    rivals = rng.poisson(competitors)
    wins = rng.uniform(size=n) < 1.0 / (1.0 + rivals)
    delay = 1 + (rng.uniform(size=n)[:, None] > np.cumsum(delay_pmf, axis=1)).sum(axis=1)
    delay = np.minimum(delay, params.max_delay_blocks)
    surviving = np.exp(-kappa * delay * rng.exponential(size=n))
    realised_out = true_out * np.exp(true_edge * (surviving - 1.0))
    executes = lands & wins & (realised_out - x - gas_paid > 0)
    # A trade that lands but would lose reverts in the contract and still pays gas.
    pnl = np.where(
        executes, realised_out - x - gas_paid, np.where(lands, -params.revert_gas_fraction * gas_paid, 0.0)
    )

    # The scanner's confidence: the probability it believes in (the true one unless it lags a shift), with noise.
    logit_p = np.log(np.clip(believed, 1e-6, 1 - 1e-6) / np.clip(1 - believed, 1e-6, 1))
    confidence = 1.0 / (1.0 + np.exp(-(logit_p + params.confidence_logit_noise * rng.standard_normal(n))))

    features = np.stack(
        [
            profit_usd,
            seen_out / x,
            hops.astype(float),
            gas_units / 1e6,
            confidence,
            time_of_day,
            dex_count.astype(float),
            x / 1000.0,
        ],
        axis=1,
    )
    assert features.shape[1] == len(FEATURE_NAMES)
    # The scanner only reports what it believes is worth at least min_profit_usd.
    keep = profit_usd >= params.min_profit_usd
    return OpportunityStream(
        features=features[keep].astype(np.float32),
        label=executes[keep].astype(np.int8),
        oracle=oracle[keep],
        timestamp_s=t[keep] - t[0],
        regime=regime[keep],
        true_edge=true_edge[keep],
        expected_competitors=competitors[keep],
        pnl_usd=pnl[keep],
        seed=seed,
        params=params,
    )
