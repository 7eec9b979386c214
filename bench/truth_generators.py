"""Three data generators that are not the project's simulator, each with a known truth.

    python -m bench.truth_generators          # ~4 minutes: train with the defaults on each, compare with the truth;
                                              # then on 8,000 rows of each, scored on the 10,000 that follow;
                                              # then a regime shift on `crowding`, retrained with the defaults

Both write the documented CSV format with a `stream` column, so a model reads
each opportunity with its stream's history, as a user's data would be read.
Their truths differ from the simulator's and from each other; both are
nonlinear, with interactions, succeed 10-20% of the time, and hide a state
per stream that only the stream's recent opportunities reveal:

- `crowding`: each pool pair has a hidden crowding level (a slow random walk
  with jumps). Crowded pairs bid gas up and squeeze the spread, but only
  noisily, so a window of recent opportunities estimates crowding better than
  one vector. Success falls with crowding, rises with profit net of gas, and
  confidence matters only on short routes.
- `gas_auction`: rivals come to a pool in bursts after a large
  opportunity and leave over the next ones (a self-exciting count). A trade
  lands only if its bid beats every rival's in the block's priority-gas
  auction (the chance falls as a power of the rivals), and pays only if its
  profit covers gas whose price rises convexly with them.
- `latency`: each scanner switches between a fast and a slow regime (a
  Markov chain). A slow scanner's opportunities arrive in bursts and its
  confidence scores are stretched; success needs a profit above a threshold
  that depends on gas and on the route's DEX count, and slow scanners lose
  most races.

The truth (each opportunity's success probability) is kept apart: the
trained model's AUC and calibration on the held-out future are compared with
the best any model could do.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import ROOT, machine, write_results

FEATURES = ("profit_usd", "profit_ratio", "route_complexity", "gas_millions", "confidence_score", "time_of_day",
            "dex_count", "input_amount_thousands")
Generated = tuple[dict[str, list[str]], np.ndarray]  # CSV columns, true success probabilities


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _columns(x: dict[str, np.ndarray], stream: np.ndarray, seconds: np.ndarray, p: np.ndarray,
             rng: np.random.Generator, name: str, seed: int) -> Generated:
    """CSV columns in time order: features as float32 text, ids, times, outcomes drawn from p, PnL."""
    order = np.argsort(seconds, kind="stable")
    success = rng.uniform(size=len(p)) < p
    gas_usd = x["gas_millions"] * 2.5
    pnl = np.where(success, x["profit_usd"], -gas_usd)
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    columns = {feature: [f"{v:.7g}" for v in x[feature][order].astype(np.float32)] for feature in FEATURES}
    columns["opportunity_id"] = [f"{name}-{seed}-{i}" for i in range(len(p))]
    columns["observed_at"] = [(start + dt.timedelta(seconds=float(t))).isoformat(timespec="milliseconds")
                              for t in seconds[order]]
    columns["success"] = ["true" if s else "false" for s in success[order]]
    columns["stream"] = [f"s{s}" for s in stream[order]]
    columns["realised_pnl_usd"] = [f"{v:.4f}" for v in pnl[order]]
    return columns, p[order]


def _route(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    route = rng.choice([2, 3, 4, 5, 6], size=n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    dex = np.minimum(route, 1 + rng.integers(0, 4, size=n))
    return route.astype(float), dex.astype(float)


def _consistent_profit(x: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A profit after gas no larger than what the route returns (the service's profit_consistency check)."""
    gross = (x["profit_ratio"] - 1.0) * x["input_amount_thousands"] * 1000.0
    return gross * rng.uniform(0.3, 0.95, len(gross))


def crowding(n: int, seed: int, streams: int = 24, competition: float = 1.0) -> Generated:
    """competition: how hard crowding costs a trade (2.5 after the shift of shift_recovery)."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, streams, n)
    seconds = np.cumsum(rng.exponential(3.0, n))
    # Each stream's crowding: a random walk in its own time, with rare jumps.
    level = np.empty(n)
    current = rng.normal(0.0, 1.0, streams)
    for i in range(n):
        s = stream[i]
        current[s] = 0.97 * current[s] + rng.normal(0.0, 0.25) + (rng.normal(0.0, 1.5) if rng.uniform() < 0.01 else 0)
        level[i] = current[s]
    route, dex = _route(rng, n)
    x: dict[str, np.ndarray] = {
        "route_complexity": route, "dex_count": dex,
        "profit_ratio": 1.0 + rng.exponential(0.004, n) * np.exp(-0.3 * level) + 2e-4,
        "input_amount_thousands": np.clip(rng.lognormal(0.8, 0.9, n), 0.05, 500.0),
        "gas_millions": np.clip(0.2 + 0.12 * _sigmoid(level) * 3 + rng.normal(0, 0.08, n), 0.05, 1.5),
        "confidence_score": rng.beta(2.5, 2.5, n),
        "time_of_day": (seconds / 86_400.0) % 1.0,
    }
    x["profit_usd"] = np.maximum(_consistent_profit(x, rng), 0.01)
    gas_usd = x["gas_millions"] * 2.5
    net = np.log1p(np.maximum(x["profit_usd"] - gas_usd, 0.0))
    short = (route <= 3).astype(float)
    conf = np.clip(x["confidence_score"], 1e-3, 1 - 1e-3)
    z = (-2.95 + 0.55 * net - 0.9 * competition * level + 1.3 * short * np.log(conf / (1 - conf))
         - 0.35 * (dex - 1) * (level > 0.5) + 0.4 * np.cos(2 * np.pi * x["time_of_day"]))
    return _columns(x, stream, seconds, _sigmoid(z), rng, "crowding", seed)


def latency(n: int, seed: int, streams: int = 16) -> Generated:
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, streams, n)
    slow_now = rng.uniform(size=streams) < 0.3
    slow = np.empty(n, bool)
    gaps = np.empty(n)
    for i in range(n):
        s = stream[i]
        if rng.uniform() < (0.02 if slow_now[s] else 0.008):
            slow_now[s] = not slow_now[s]
        slow[i] = slow_now[s]
        gaps[i] = rng.exponential(0.6 if slow_now[s] else 3.5)  # slow scanners report in bursts
    seconds = np.cumsum(gaps)
    route, dex = _route(rng, n)
    confidence = rng.beta(3.0, 2.0, n)
    confidence = np.where(slow, np.clip(0.5 + 1.6 * (confidence - 0.5) + rng.normal(0, 0.05, n), 0.0, 1.0), confidence)
    x: dict[str, np.ndarray] = {
        "route_complexity": route, "dex_count": dex,
        "profit_ratio": 1.0 + rng.gamma(1.5, 0.003, n) + 1e-4,
        "input_amount_thousands": np.clip(rng.lognormal(0.3, 1.1, n), 0.05, 500.0),
        "gas_millions": np.clip(rng.gamma(4.0, 0.08, n), 0.05, 1.5),
        "confidence_score": confidence,
        "time_of_day": (seconds / 86_400.0) % 1.0,
    }
    x["profit_usd"] = np.maximum(_consistent_profit(x, rng), 0.01)
    hurdle = 1.5 + 6.0 * x["gas_millions"] * (1 + 0.4 * (dex - 1))
    margin = np.log(x["profit_usd"] / hurdle)
    z = (-2.2 + 1.6 * np.tanh(1.5 * margin) - 1.8 * slow + 0.9 * (confidence - 0.5) * (1 + slow)
         + 0.5 * (route == 2) * (1 - slow))
    return _columns(x, stream, seconds, _sigmoid(z), rng, "latency", seed)


def gas_auction(n: int, seed: int, streams: int = 20) -> Generated:
    """Each pool's rivals come in bursts: a large opportunity draws rivals to its pool, who leave over the next
    ones (a self-exciting level the features never show, which the pool's recent opportunities reveal). A trade
    lands when its bid beats the rivals' in the block's priority-gas auction, and pays when its profit covers gas
    whose price rises convexly with them."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, streams, n)
    route, dex = _route(rng, n)
    x: dict[str, np.ndarray] = {
        "route_complexity": route, "dex_count": dex,
        "profit_ratio": 1.0 + rng.gamma(1.2, 0.004, n) + 1e-4,
        "input_amount_thousands": np.clip(rng.lognormal(0.5, 1.0, n), 0.05, 500.0),
        "confidence_score": rng.beta(2.0, 2.0, n),
    }
    x["profit_usd"] = np.maximum(_consistent_profit(x, rng), 0.01)
    intensity = np.full(streams, 0.4)
    rivals = np.empty(n)
    gaps = np.empty(n)
    for i in range(n):
        s = stream[i]
        intensity[s] = 0.4 + 0.9 * (intensity[s] - 0.4)  # a burst fades over the pool's next opportunities
        rivals[i] = intensity[s]
        if x["profit_usd"][i] > 25.0:
            intensity[s] += 1.2 * np.log(x["profit_usd"][i] / 25.0) + 0.5
        gaps[i] = rng.exponential(3.0 / (1.0 + 0.4 * intensity[s]))  # busy pools report faster
    seconds = np.cumsum(gaps)
    usage = 0.12 + 0.05 * route + rng.gamma(3.0, 0.02, n)
    # The bot's gas estimate sees some of the rivals' bidding, noisily (a count drawn around their level).
    x["gas_millions"] = np.clip(usage * (1.0 + 0.2 * rng.poisson(rivals)), 0.05, 1.5)
    x["time_of_day"] = (seconds / 86_400.0) % 1.0
    bid = 0.3 + 0.65 * x["confidence_score"]  # the scanner's confidence tracks how strong its bid is
    wins = bid ** rivals
    cost_usd = usage * 2.5 * (1.0 + rivals) ** 1.5
    pays = _sigmoid(1.3 * np.log(x["profit_usd"] / cost_usd) - 2.2 - 0.25 * (dex - 1))
    return _columns(x, stream, seconds, 0.92 * wins * pays, rng, "gas_auction", seed)


GENERATORS: dict[str, Callable[[int, int], Generated]] = {"crowding": crowding, "latency": latency,
                                                          "gas_auction": gas_auction}


def write_csv(columns: dict[str, list[str]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))


def against_truth(name: str, n: int, seed: int, scratch: Path, overrides: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Generate, train on the file with the defaults (or `overrides`), compare the test period with the truth."""
    from omni_mev.evaluation import auc_roc, expected_calibration_error
    from omni_mev.training.report import served_row
    from omni_mev.training.train import TrainConfig, train

    columns, truth = GENERATORS[name](n, seed)
    data = scratch / f"{name}-{seed}.csv"
    write_csv(columns, data)
    config = TrainConfig(data=str(data), seed=seed, **(overrides or {}))
    started = time.perf_counter()
    card = train(config, scratch / f"{name}-{seed}-model", progress=lambda line: None)
    seconds = time.perf_counter() - started
    test_start = int(n * (config.train_share + config.validation_share))
    y = np.array([s == "true" for s in columns["success"]])[test_start:]
    served = card["test_metrics"][served_row(card)]
    truth_auc = auc_roc(y, truth[test_start:])
    return {
        "generator": name, "opportunities": n, "seed": seed, "success_rate": round(float(np.mean(truth)), 4),
        "overrides": overrides or {}, "budget": card["training"]["budget"], "family": card["family"],
        "test": int(len(y)), "truth_auc": round(truth_auc, 4),
        "truth_ece": round(expected_calibration_error(y, truth[test_start:]), 4),
        "model_auc": round(served["auc_roc"], 4), "model_ece": round(served["ece"], 4),
        "auc_gap": round(truth_auc - served["auc_roc"], 4),
        "best_epoch": card["training"]["best_epoch"], "stopped_by": card["training"]["stopped_by"],
        "seconds": round(seconds, 1),
    }


def small_data(name: str, n: int, seed: int, scratch: Path, later: int = 10_000) -> dict[str, Any]:
    """Trained with the defaults on the first `n` rows, scored on the `later` rows that follow (each with its
    stream's history from there): AUC gap and ECE on rows enough for an ECE to mean something, and how confident
    the model is where it says 0.5 or more, against the truth there."""
    from omni_mev.evaluation import auc_roc, expected_calibration_error
    from omni_mev.training.data import load
    from omni_mev.training.train import TrainConfig, train
    from bench.warm_start import score

    columns, truth = GENERATORS[name](n + later, seed)
    write_csv({key: values[:n] for key, values in columns.items()}, scratch / "small.csv")
    write_csv({key: values[n:] for key, values in columns.items()}, scratch / "later.csv")
    card = train(TrainConfig(data=str(scratch / "small.csv"), seed=seed), scratch / "small", progress=lambda _: None)
    rows = load(str(scratch / "later.csv"))
    p, true = score(scratch / "small" / "lstm_omni.onnx", rows), truth[n:]
    top = p >= 0.5
    return {"generator": name, "seed": seed, "trained_on": n, "later_rows": later, "family": card["family"],
            "auc_gap": round(auc_roc(rows.label, true) - auc_roc(rows.label, p), 4),
            "ece_later": round(expected_calibration_error(rows.label, p), 4),
            "card_ece_evidence": card["ece_evidence"],
            "scored_at_least_half": {"rows": int(top.sum()),
                                     "mean_confidence": round(float(p[top].mean()), 3) if top.any() else None,
                                     "true_rate": round(float(true[top].mean()), 3) if top.any() else None}}


def shift_recovery(scratch: Path, seed: int = 1) -> dict[str, Any]:
    """The retrain after a regime shift on `crowding`, offline: a model trained with the defaults on 40,000 rows;
    then crowding costs 2.5 times as much; a retrain warm-started from it (as `omni-mev retrain` does) on the
    first 12,000 post-shift rows, with the defaults; both scored on 30,000 later post-shift rows, each with its
    history, against the truth."""
    from omni_mev.evaluation import auc_roc, expected_calibration_error
    from omni_mev.training.data import load
    from omni_mev.training.train import TrainConfig, train
    from bench.warm_start import score

    def trained(columns: dict[str, list[str]], name: str, init: Path | None) -> Path:
        write_csv(columns, scratch / f"{name}.csv")
        output = scratch / name
        train(TrainConfig(data=str(scratch / f"{name}.csv"), seed=seed, init_weights=str(init) if init else None),
              output, progress=lambda line: None)
        return output

    started = time.perf_counter()
    before = trained(crowding(40_000, seed)[0], "before", None)
    retrained = trained(crowding(12_000, seed + 1, competition=2.5)[0], "retrained", before / "lstm_omni.pt")
    columns, truth = crowding(30_000, seed + 2, competition=2.5)
    write_csv(columns, scratch / "later.csv")
    later = load(str(scratch / "later.csv"))
    truth_auc = auc_roc(later.label, truth)
    figures = {"truth_auc": round(truth_auc, 4)}
    for name, model in (("stale", before), ("retrained", retrained)):
        p = score(model / "lstm_omni.onnx", later)
        figures[name] = {"auc": round(auc_roc(later.label, p), 4), "auc_gap": round(truth_auc - auc_roc(later.label, p), 4),
                         "ece": round(expected_calibration_error(later.label, p), 4)}
    return {"generator": "crowding", "seed": seed, "shift": "crowding costs 2.5 times as much",
            "post_shift_outcomes_trained_on": 12_000, **figures, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--small", type=int, default=8_000, help="rows of the small-data runs (0: none)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "machine": machine(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="omni-mev-truth-") as scratch:
        for name in GENERATORS:
            for seed in (int(s) for s in args.seeds.split(",")):
                run = against_truth(name, args.n, seed, Path(scratch))
                results["runs"].append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "budget"}), flush=True)
        results["small_data"] = []
        for name in GENERATORS if args.small else ():
            for seed in (int(s) for s in args.seeds.split(",")):
                small = small_data(name, args.small, seed, Path(scratch))
                results["small_data"].append(small)
                print(json.dumps({k: v for k, v in small.items() if k != "card_ece_evidence"}), flush=True)
        results["shift_recovery"] = shift_recovery(Path(scratch))
        print(json.dumps(results["shift_recovery"]), flush=True)
    path = write_results(results, args.results, "truth-generators")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
