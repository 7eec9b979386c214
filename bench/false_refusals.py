"""How often the plausibility checks refuse opportunities of the very market a model was trained on.

    python -m bench.false_refusals     # ~1 minute: bench/results/false-refusals-<date>.json

Each opportunity is checked with its whole history, as the service checks a
window. Two cases:

- a user's small data: the support drawn from a time-ordered 70% training
  split of 40,000 simulated opportunities, the later 30% checked (3 seeds);
- the shipped model's card, on 50,000 opportunities of each of 3 seeds it was
  never trained on;
- a challenger as `omni-mev retrain` trains one, on 2,000 and on 12,000
  outcomes (the support from the 70% training split), on 50,000 later
  opportunities of another seed (3 seeds each; the rules now only).

Each is measured with the rules now and with the rules before the support had
a margin (support = the training extremes; a history step outside it flags
the window). docs/model.md quotes the figures.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
from typing import Any

import numpy as np

from bench.run import ROOT, machine, write_results
from omni_mev.features import FEATURE_NAMES
from omni_mev.plausibility import SUPPORTED, Plausibility, Support, card_support, support_bounds
from omni_mev.runtime.loader import read_card
from omni_mev.training.data import Dataset, from_simulation
from omni_mev.training.simulate import simulate
from omni_mev.training.train import TrainConfig, split_by_time

SUPPORTED_COLUMNS = [FEATURE_NAMES.index(name) for name in SUPPORTED]
CHALLENGER_ROWS = (2_000, 12_000)


def extremes(vectors: np.ndarray) -> Support:
    """The support without a margin: the training data's minimum and maximum."""
    return {name: [float(vectors[:, i].min()), float(vectors[:, i].max())]
            for name, i in zip(SUPPORTED, SUPPORTED_COLUMNS)}


def flagged(parts: list[Dataset], support: Support, history_held_to_support: bool) -> dict[str, Any]:
    """How many opportunities of `parts` fail a check, and which checks."""
    rules = Plausibility(support)
    low = np.array([support[name][0] for name in SUPPORTED])
    high = np.array([support[name][1] for name in SUPPORTED])
    total, refused, checks = 0, 0, collections.Counter()
    for part in parts:
        for _, windows in part.scored_windows():
            windows = windows.astype(np.float64)
            past = windows[:, :-1] if windows.shape[1] > 1 else None
            failed = rules.of_batch(windows[:, -1], past)
            if history_held_to_support and past is not None:
                outside = ((past[:, :, SUPPORTED_COLUMNS] < low) | (past[:, :, SUPPORTED_COLUMNS] > high)).any(axis=(1, 2))
                failed = [f + ("history",) if out and "history" not in f else f for f, out in zip(failed, outside)]
            total += len(failed)
            refused += sum(1 for f in failed if f)
            for f in failed:
                checks.update(f)
    return {"opportunities": total, "flagged": refused, "rate": refused / total, "checks": dict(checks)}


def run(small_rows: int, shipped_rows: int) -> dict[str, Any]:
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "machine": machine(), "small_data": {}, "shipped_model": {}, "challenger": {}}
    for seed in (11, 12, 13):
        splits = split_by_time(from_simulation(simulate(small_rows, seed=seed)), TrainConfig())
        vectors = splits["train"].vectors[splits["train"].current]
        held_out = [splits["validation"], splits["test"]]
        results["small_data"][f"seed {seed}"] = {
            "rows": small_rows,
            "before": flagged(held_out, extremes(vectors), history_held_to_support=True),
            "now": flagged(held_out, support_bounds(vectors), history_held_to_support=False)}
    card = read_card(ROOT / "models" / "lstm_omni.onnx")
    trained = {name: card["training_range"][name] for name in SUPPORTED}
    for seed in (101, 202, 303):
        unseen = [from_simulation(simulate(shipped_rows, seed=seed))]
        results["shipped_model"][f"seed {seed}"] = {
            "rows": shipped_rows,
            "before": flagged(unseen, trained, history_held_to_support=True),
            "now": flagged(unseen, card_support(card), history_held_to_support=False)}
    for rows in CHALLENGER_ROWS:
        for seed in (11, 12, 13):
            splits = split_by_time(from_simulation(simulate(rows, seed=seed)), TrainConfig())
            later = [from_simulation(simulate(shipped_rows, seed=seed + 100))]
            results["challenger"][f"{rows} rows, seed {seed}"] = {
                "rows": rows, "checked": shipped_rows,
                "now": flagged(later, support_bounds(splits["train"].vectors[splits["train"].current]),
                               history_held_to_support=False)}
    return results


def summary(results: dict[str, Any]) -> str:
    lines = []
    for case in ("small_data", "shipped_model"):
        for rules in ("before", "now"):
            runs = [r[rules] for r in results[case].values()]
            rates = ", ".join(f"{r['rate']:.3%}" for r in runs)
            pooled = sum(r["flagged"] for r in runs) / sum(r["opportunities"] for r in runs)
            lines.append(f"{case} {rules}: {rates} (pooled {pooled:.3%})")
    for rows in CHALLENGER_ROWS:
        runs = [r["now"] for r in results["challenger"].values() if r["rows"] == rows]
        rates = ", ".join(f"{r['rate']:.3%}" for r in runs)
        lines.append(f"challenger on {rows} outcomes now: {rates} (pooled "
                     f"{sum(r['flagged'] for r in runs) / sum(r['opportunities'] for r in runs):.3%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small samples, to check the harness")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    results = run(4_000 if args.smoke else 40_000, 2_000 if args.smoke else 50_000)
    path = write_results(results, args.results, "false-refusals", args.smoke)
    print(summary(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
