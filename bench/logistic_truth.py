"""A data generator that is not the project's simulator: a known logistic truth over transformed features.

    python -m bench.logistic_truth --n 60000          # write the CSV, train on it, compare with the truth

Each opportunity's success probability is

    p = sigmoid(-0.3 + 0.55 log1p(profit_usd) + 1.4 logit(confidence_score) - 1.2 log(gas_millions)
                + 0.35 [route_complexity == 2] - 0.25 (dex_count - 1) + 0.6 sin(2 pi time_of_day))

and the outcome is drawn from it. The file has no stream column (single
vectors) and realised PnL drawn from the outcome; its true probabilities are
kept apart, so the trained model's AUC and calibration on the held-out future
can be compared with the best any model could do.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("profit_usd", "profit_ratio", "route_complexity", "gas_millions", "confidence_score", "time_of_day",
            "dex_count", "input_amount_thousands")


def generate(n: int, seed: int) -> tuple[dict[str, list[Any]], np.ndarray]:
    """(CSV columns, true probabilities) of n opportunities, in time order."""
    rng = np.random.default_rng(seed)
    route = rng.choice([2, 3, 4, 5, 6], size=n, p=[0.35, 0.35, 0.15, 0.1, 0.05])
    dex = np.minimum(route, 1 + rng.integers(0, 4, size=n))
    x = {
        "profit_usd": rng.lognormal(2.0, 1.1, n),
        "profit_ratio": 1.0 + rng.exponential(0.006, n),
        "route_complexity": route.astype(float),
        "gas_millions": rng.uniform(0.15, 0.9, n),
        "confidence_score": rng.beta(2.0, 2.0, n),
        "time_of_day": rng.uniform(0.0, 1.0, n),
        "dex_count": dex.astype(float),
        "input_amount_thousands": rng.lognormal(0.5, 1.0, n),
    }
    conf = np.clip(x["confidence_score"], 1e-4, 1 - 1e-4)
    z = (-0.3 + 0.55 * np.log1p(x["profit_usd"]) + 1.4 * np.log(conf / (1 - conf)) - 1.2 * np.log(x["gas_millions"])
         + 0.35 * (route == 2) - 0.25 * (dex - 1) + 0.6 * np.sin(2 * np.pi * x["time_of_day"]))
    p = 1.0 / (1.0 + np.exp(-z))
    success = rng.uniform(size=n) < p
    pnl = np.where(success, x["profit_usd"], -rng.uniform(0.5, 3.0, n))
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    times = np.cumsum(rng.exponential(2.0, n))
    columns = {name: [f"{v:.7g}" for v in x[name].astype(np.float32)] for name in FEATURES}
    columns["opportunity_id"] = [f"truth-{seed}-{i}" for i in range(n)]
    columns["observed_at"] = [(start + dt.timedelta(seconds=float(t))).isoformat() for t in times]
    columns["success"] = ["true" if s else "false" for s in success]
    columns["realised_pnl_usd"] = [f"{v:.4f}" for v in pnl]
    return columns, p


def write_csv(columns: dict[str, list[Any]], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))


def run(n: int, seed: int, config_overrides: dict[str, Any], output: Path) -> dict[str, Any]:
    """Generate, train on the file, and compare the test period with the truth."""
    from omni_mev.evaluation import auc_roc, expected_calibration_error
    from omni_mev.training.report import served_row
    from omni_mev.training.train import TrainConfig, train

    columns, truth = generate(n, seed)
    data = output / "logistic_truth.csv"
    write_csv(columns, data)
    config = TrainConfig(data=str(data), seed=seed, **config_overrides)
    card = train(config, output / "model", progress=lambda line: None)
    test_start = int(n * (config.train_share + config.validation_share))
    y = np.array([s == "true" for s in columns["success"]])[test_start:]
    served = served_row(card)
    return {
        "opportunities": n, "seed": seed, "family": card["family"], "test": int(len(y)),
        "truth_auc": round(auc_roc(y, truth[test_start:]), 4),
        "truth_ece": round(expected_calibration_error(y, truth[test_start:]), 4),
        "model_auc": round(card["test_metrics"][served]["auc_roc"], 4),
        "model_ece": round(card["test_metrics"][served]["ece"], 4),
        "all": {name: {"auc": round(m["auc_roc"], 4), "ece": round(m["ece"], 4)}
                for name, m in card["test_metrics"].items()},
        "stopped_by": card["training"]["stopped_by"], "seconds": card["training_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as scratch:
        result = run(args.n, args.seed, {"hidden_size": 16, "batch_size": 512, "max_epochs": 30,
                                         "batches_per_epoch": 100, "patience": 5}, Path(scratch))
    print(json.dumps(result, indent=2))
    return 0 if result["truth_auc"] - result["model_auc"] <= 0.02 and result["model_ece"] <= 0.03 else 1


if __name__ == "__main__":
    raise SystemExit(main())
