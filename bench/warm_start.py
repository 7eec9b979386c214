"""How a retrain should start after a regime shift: from the served network (warm) at several learning rates,
or from scratch (cold), on the small window of outcomes a retrain has.

    python -m bench.warm_start     # ~2 minutes: bench/results/warm-start-<date>.json

The shift is `make shift`'s (three times the competition, the scanner still
believing the old). Each option trains on the same 12,000 post-shift outcomes
(the budget drawn from them, as `omni-mev retrain` does) and is scored on
30,000 later post-shift opportunities, each with its whole history, against
the simulator's true probability. The shipped model (the served network)
warm-starts; its size (32 units) wins over the rule's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.regime_shift import shifted_params
from bench.run import ROOT, machine, write_results

OPTIONS: dict[str, dict[str, Any]] = {
    "cold start (the rule's network)": {},
    "warm, learning rate 5e-3 (1x)": {"warm": True, "learning_rate": 5e-3},
    "warm, learning rate 1e-3 (0.2x, the default)": {"warm": True},
    "warm, learning rate 5e-4 (0.1x)": {"warm": True, "learning_rate": 5e-4},
}


def score(model_path: Path, dataset: Any) -> np.ndarray:
    """The ONNX model's confidences for every example of `dataset`, with their history."""
    from omni_mev.runtime.onnx_runtime import OnnxModel
    from omni_mev.training.evaluate import confidences

    model = OnnxModel(model_path)
    model.load()
    return confidences(model, dataset)


def run(train_rows: int, test_rows: int, seed: int) -> dict[str, Any]:
    from omni_mev.evaluation import auc_roc, expected_calibration_error
    from omni_mev.training.config import TrainConfig
    from omni_mev.training.data import from_simulation
    from omni_mev.training.simulate import simulate
    from omni_mev.training.train import train

    window = from_simulation(simulate(train_rows, seed=seed, params=shifted_params()))
    later = from_simulation(simulate(test_rows, seed=seed + 1, params=shifted_params()))
    truth_auc = auc_roc(later.label, later.oracle)
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "machine": machine(), "train_rows": train_rows, "test_rows": test_rows, "seed": seed,
                               "truth_auc": round(truth_auc, 4), "options": {}}
    served = score(ROOT / "models" / "lstm_omni.onnx", later)
    results["options"]["no retrain (the served model)"] = {"auc": round(auc_roc(later.label, served), 4),
                                                           "auc_gap": round(truth_auc - auc_roc(later.label, served), 4),
                                                           "ece": round(expected_calibration_error(later.label, served), 4)}
    with tempfile.TemporaryDirectory(prefix="omni-mev-warm-") as scratch:
        for name, option in OPTIONS.items():
            config = TrainConfig(seed=seed, learning_rate=option.get("learning_rate"),
                                 init_weights=str(ROOT / "models" / "lstm_omni.pt") if option.get("warm") else None)
            output = Path(scratch) / f"option-{len(results['options'])}"
            started = time.perf_counter()
            card = train(config, output, dataset=window, progress=lambda line: None)
            seconds = time.perf_counter() - started
            p = score(output / "lstm_omni.onnx", later)
            fitting = card["training"]
            results["options"][name] = {
                "family": card["family"], "auc": round(auc_roc(later.label, p), 4),
                "auc_gap": round(truth_auc - auc_roc(later.label, p), 4),
                "ece": round(expected_calibration_error(later.label, p), 4),
                "best_epoch": fitting["best_epoch"], "stopped_by": fitting["stopped_by"],
                "train_loss_at_best": round(fitting["epochs"][fitting["best_epoch"] - 1]["train_loss"], 4),
                "validation_loss_at_best": round(fitting["best_validation_loss"], 4),
                "learning_rate": fitting["config"]["learning_rate"], "hidden_size": card["architecture"]["lstm"]
                ["hidden_size"], "seconds": round(seconds, 1)}
            print(name, json.dumps(results["options"][name]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args(argv)
    results = run(12_000, 30_000, args.seed)
    path = write_results(results, args.results, "warm-start")
    print(f"truth AUC {results['truth_auc']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
