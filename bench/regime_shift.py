"""The champion/challenger loop, shown on a regime shift, through the running service.

    python -m bench.regime_shift             # the full run (make shift): bench/results/regime-shift-<date>.json,
                                             # docs/regime_shift.png
    python -m bench.regime_shift --small     # the small version `make test` runs (tests/test_regime_shift.py)

gunicorn serves the champion of a fresh registry (the shipped model) with a
fresh SQLite ledger. A simulated bot sends each opportunity with its stream's
previous 8 as history and posts every outcome (it executes them all). Then:

1. before: the simulator as trained on;
2. the shift: competition grows and contests big prizes harder, and the
   scanner's own confidence keeps the old competition level (it has not learnt
   the new market either). The champion, now stale, keeps serving;
3. `omni-mev retrain --now --since <shift>` trains a challenger on the
   post-shift outcomes (warm-started from the champion) and registers it; the
   service reloads and scores it as the shadow on the next opportunities;
4. `omni-mev retrain` runs the gate on those live outcomes and promotes it;
5. after: the promoted champion serves.

Each phase's live AUC (the confidences the service answered) is reported with
the oracle's AUC on the same records; the stale model is also scored offline on
the last phase's records, to show what the promotion gained.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
RECOVERY_GOAL = 0.02  # AUC within this of the oracle after the promotion
RECOVERY_OUTCOMES_GOAL = 20_000  # labelled outcomes after the shift, at most, until a better champion serves


@dataclass(frozen=True)
class Sizes:
    before: int
    train: int  # post-shift, stale champion: what the challenger learns from
    gate: int  # post-shift, challenger in the shadow: what the gate judges on
    after: int  # post-shift, promoted champion
    min_outcomes: int  # AI_PROMOTE_MIN_OUTCOMES
    train_flags: tuple[str, ...] = ()  # none: `omni-mev retrain` with its defaults, the budget drawn from the data


# Recovery within 20,000 labelled outcomes after the shift: 12,000 to train the challenger on, 6,000 for the gate.
FULL = Sizes(before=20_000, train=12_000, gate=6_000, after=30_000, min_outcomes=5_000)
SMALL = Sizes(before=3_000, train=12_000, gate=4_000, after=6_000, min_outcomes=1_500)


def shifted_params() -> Any:
    """After the shift: three times the rivals, drawn harder by big prizes; the scanner still believes the old."""
    from omni_mev.training.simulate import SimulatorParams

    before = SimulatorParams()
    return SimulatorParams(competitors_base=3 * before.competitors_base, competitors_profit_elasticity=1.0,
                           scanner_competitors_base=before.competitors_base,
                           scanner_competitors_profit_elasticity=before.competitors_profit_elasticity)


def _auc_difference_se(y: np.ndarray, a: np.ndarray, b: np.ndarray, rounds: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of AUC(a) - AUC(b) on the same records."""
    from omni_mev.evaluation import auc_roc

    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        differences.append(auc_roc(y[pick], a[pick]) - auc_roc(y[pick], b[pick]))
    return float(np.std(differences, ddof=1))


def _figures(y: np.ndarray, served: np.ndarray, oracle: np.ndarray) -> dict[str, Any]:
    from omni_mev.evaluation import auc_roc, expected_calibration_error

    return {"records": int(len(y)), "success_rate": round(float(y.mean()), 4),
            "auc": round(auc_roc(y, served), 4), "oracle_auc": round(auc_roc(y, oracle), 4),
            "ece": round(expected_calibration_error(y, served), 4)}


class Loop:
    """The service, its registry and ledger, and the bot that drives them."""

    def __init__(self, scratch: Path, sizes: Sizes) -> None:
        from omni_mev.registry.store import Registry

        self.sizes = sizes
        self.registry = Registry(scratch / "registry")
        self.registry.register(ROOT / "models", user="regime-shift", note="the shipped model")
        self.registry.assign("champion", self.registry.versions()[0].version, user="regime-shift")
        self.env = {"AI_MODEL_REGISTRY": str(self.registry.root), "AI_LEDGER_URL": f"sqlite:///{scratch / 'ledger.db'}",
                    "AI_PROMOTE_MIN_OUTCOMES": str(sizes.min_outcomes), "AI_PROMOTE_WINDOW": "1d",
                    "AI_RETRAIN_MIN_OUTCOMES": str(min(2000, sizes.train // 2)), "OMNI_MEV_ENV_FILE": "/nonexistent"}
        self.ids = 0
        self.timeline: list[dict[str, Any]] = []

    def command(self, *args: str) -> dict[str, Any]:
        """An `omni-mev` command against the loop's registry and ledger; its JSON summary (last line)."""
        env = {**os.environ, **self.env}
        env.pop("AI_MODEL_PATH", None)
        result = subprocess.run([sys.executable, "-m", "omni_mev.cli", *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"omni-mev {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def phase(self, client: Any, name: str, n: int, params: Any, seed: int) -> dict[str, Any]:
        """n simulated opportunities scored by the service and their outcomes posted."""
        from bench.closed_loop import post_outcomes, score_stream, windows
        from omni_mev.training.simulate import simulate

        stream = simulate(n, seed=seed, params=params)
        ids = [f"shift-{name}-{i}" for i in range(n)]
        steps = windows(stream.features)
        served = score_stream(client, steps, ids)
        post_outcomes(client, ids, stream)
        status = client.session.get(client.base_url + "/status", timeout=5).json()
        record = {"phase": name, "model_version": status["model_version"], "shadow_version": status["shadow_version"],
                  **_figures(stream.label.astype(np.int8), served, stream.oracle)}
        self.timeline.append({"phase": name, "served": served, "oracle": stream.oracle,
                              "label": stream.label.astype(np.int8), "steps": steps})
        return record

    def wait_for(self, client: Any, field: str, value: str, timeout: float = 60.0) -> None:
        """Until every worker reports `field` = value in /status (the reload reached them all)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A fresh connection each time: a kept-alive one would ask the same worker.
            answers = {requests.get(client.base_url + "/status", headers={"Connection": "close"},
                                    timeout=5).json()[field] for _ in range(12)}
            if answers == {value}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the service did not reload: /status {field} never became {value} everywhere")


def run(sizes: Sizes, seed: int = 20261127) -> dict[str, Any]:
    """The whole loop; the figures, the gate's comparison and the goals."""
    from bench.run import omni_mev
    from omni_mev.client import Client
    from omni_mev.runtime.onnx_runtime import OnnxModel
    from omni_mev.training.simulate import SimulatorParams

    scratch = Path(tempfile.mkdtemp(prefix="omni-mev-shift-"))
    loop = Loop(scratch, sizes)
    server = omni_mev("regime shift", loop.env)
    phases: list[dict[str, Any]] = []
    try:
        server.start()
        with Client(server.url, timeout=120.0) as client:
            champion = loop.registry.alias("champion")
            phases.append(loop.phase(client, "before", sizes.before, SimulatorParams(), seed))
            shift_at = dt.datetime.now(dt.UTC)
            phases.append(loop.phase(client, "after, stale champion", sizes.train, shifted_params(), seed + 1))
            trained = loop.command("retrain", "--now", "--since", shift_at.isoformat(), *sizes.train_flags)
            if trained["action"] != "trained":
                raise RuntimeError(f"retrain did not train: {trained}")
            loop.wait_for(client, "shadow_version", trained["version"])
            phases.append(loop.phase(client, "after, challenger in the shadow", sizes.gate, shifted_params(),
                                     seed + 2))
            gate = loop.command("retrain")
            if gate["action"] == "promoted":
                loop.wait_for(client, "model_version", trained["version"])
            recovered_after_s = (dt.datetime.now(dt.UTC) - shift_at).total_seconds()
            phases.append(loop.phase(client, "after, promoted", sizes.after, shifted_params(), seed + 3))
        last = loop.timeline[-1]
        stale = OnnxModel(loop.registry.get(champion).onnx)
        stale.load()
        stale_confidences = np.concatenate([stale.predict(w[None].astype(np.float32)) for w in last["steps"]])
        y, served = last["label"], last["served"]
        stale_figures = _figures(y, stale_confidences, last["oracle"])
        last["stale"] = stale_confidences
        se = _auc_difference_se(y, served, stale_confidences)
        promoted = phases[-1]
        result = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "seed": seed,
            "sizes": asdict(sizes), "shift": {k: v for k, v in asdict(shifted_params()).items()
                                              if v != asdict(SimulatorParams())[k]},
            "champion": champion, "challenger": trained["version"], "retrain": trained, "gate": gate,
            "phases": phases, "stale_on_last_phase": stale_figures,
            "recovery": {"labelled_outcomes": sizes.train + sizes.gate, "wall_s": round(recovered_after_s, 1),
                         "what": "from the shift until the promoted challenger served on every worker: the "
                                 "outcomes it was trained on and judged on, and the wall time (scoring them "
                                 "through the service, retraining, the gate and the reload)"},
            "goals": {
                "promoted": gate["action"] == "promoted",
                "within_outcomes": sizes.train + sizes.gate <= RECOVERY_OUTCOMES_GOAL,
                "recovered_within": round(promoted["oracle_auc"] - promoted["auc"], 4),
                "recovered": promoted["oracle_auc"] - promoted["auc"] <= RECOVERY_GOAL,
                "stale_gap": round(promoted["auc"] - stale_figures["auc"], 4),
                "stale_gap_se": round(se, 4),
                "stale_measurably_lower": promoted["auc"] - stale_figures["auc"] > 2 * se,
            },
        }
        result["timeline"] = [{"phase": t["phase"], "records": len(t["label"])} for t in loop.timeline]
        result["_series"] = loop.timeline
        return result
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def figure(result: dict[str, Any], path: Path, window: int) -> None:
    """How far the served model's AUC lies below the oracle's, rolling over the stream, the phases marked.

    The gap, not the AUC itself: the regime's own swings move both AUCs
    together and would hide what the loop does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from omni_mev.evaluation import auc_roc

    series = result["_series"]
    y = np.concatenate([s["label"] for s in series])
    served = np.concatenate([s["served"] for s in series])
    oracle = np.concatenate([s["oracle"] for s in series])
    step = max(1, window // 4)

    def gaps(scores: np.ndarray, start: int = 0) -> tuple[np.ndarray, list[float]]:
        ends = np.arange(start + window, len(y) + 1, step)
        return ends, [auc_roc(y[e - window:e], oracle[e - window:e]) - auc_roc(y[e - window:e], scores[e - window:e])
                      for e in ends]

    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    ax.plot(*gaps(served), label="served model (live confidences)")
    last_start = len(y) - len(series[-1]["label"])
    stale = np.concatenate([served[:last_start], series[-1]["stale"]])
    ax.plot(*gaps(stale, last_start), label="stale champion on the same records (offline)", linestyle=":")
    ax.axhline(RECOVERY_GOAL, color="red", linewidth=0.8, linestyle="--", label=f"goal: within {RECOVERY_GOAL}")
    ax.axhline(0.0, color="black", linewidth=0.5)
    boundary = 0
    for s, text in zip(series, ("", "regime shift", "challenger in the shadow", "challenger promoted")):
        if text:
            ax.axvline(boundary, color="grey", linewidth=0.8)
            ax.text(boundary, ax.get_ylim()[1], " " + text, rotation=90, va="top", fontsize=8)
        boundary += len(s["label"])
    ax.set_xlabel("opportunities scored")
    ax.set_ylabel(f"oracle AUC - model AUC, last {window:,}")
    ax.set_title("Live AUC below the oracle across a regime shift: stale champion, retrained challenger, promotion")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the small version the tests run")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder for the JSON")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="folder for regime_shift.png ('' to skip)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    result = run(SMALL if args.small else FULL)
    series = result.pop("_series")
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"regime-shift-{result['date'][:10]}{'-small' if args.small else ''}.json").write_text(text + "\n")
    if args.docs:
        figure({**result, "_series": series}, Path(args.docs) / "regime_shift.png", 1000 if args.small else 4000)
    goals = result["goals"]
    return 0 if all(goals[name] for name in ("promoted", "within_outcomes", "recovered", "stale_measurably_lower")) \
        else 1


if __name__ == "__main__":
    raise SystemExit(main())
