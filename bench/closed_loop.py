"""The closed loop, shown: a simulated stream is scored by the running service, its outcomes are posted back,
and the service's live quality (/quality) is compared with the offline evaluation of the same model on the
same records.

    python -m bench.closed_loop                 # 20,000 opportunities against a fresh gunicorn (make loop)
    python -m bench.closed_loop --url URL       # against a running service (its ledger gets the records)

Each opportunity is sent with the stream's previous HISTORY opportunities as its
history and a fresh opportunity_id, in batches; every outcome the simulator
drew is then posted (success, realised PnL). Loads are bounded by the stream's
length; everything stays on loopback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HISTORY = 8
BATCH = 256
TOLERANCE = {"auc": 0.005, "ece": 0.01}


def windows(features: np.ndarray, history: int = HISTORY) -> list[np.ndarray]:
    """Each opportunity with up to `history` earlier ones of the stream, oldest first."""
    return [features[max(0, i - history):i + 1] for i in range(len(features))]


def score_stream(client: Any, steps: list[np.ndarray], ids: list[str]) -> np.ndarray:
    """Each window scored by the service (its last step the opportunity), in batches; the confidences."""
    served: list[float] = []
    for start in range(0, len(ids), BATCH):
        items = [{"features": w[-1].tolist(), "history": w[:-1].tolist(), "opportunity_id": ids[i]}
                 for i, w in zip(range(start, start + BATCH), steps[start:start + BATCH])]
        served += [r.confidence for r in client.predict_batch(items).results]
    return np.array(served)


def post_outcomes(client: Any, ids: list[str], stream: Any) -> None:
    """Every opportunity's simulated outcome (the bot executed them all), in batches; all must be stored."""
    for start in range(0, len(ids), BATCH):
        answer = client.post_outcomes([
            {"opportunity_id": ids[i], "success": bool(stream.label[i]), "realised_pnl_usd": float(stream.pnl_usd[i])}
            for i in range(start, min(start + BATCH, len(ids)))])
        if answer["unknown"] or answer["conflicts"]:
            raise RuntimeError(f"outcomes not stored: {answer['unknown'][:3]} {answer['conflicts'][:3]}")


def run_loop(client: Any, n: int, seed: int, run_id: str | None = None) -> dict[str, Any]:
    """Drive the service at `client` (omni_mev.client.Client) with n simulated opportunities; compare."""
    from omni_mev.evaluation import auc_roc, expected_calibration_error
    from omni_mev.runtime.onnx_runtime import OnnxModel
    from omni_mev.training.simulate import simulate

    stream = simulate(n, seed=seed)
    run_id = run_id or uuid.uuid4().hex[:8]
    ids = [f"loop-{run_id}-{i}" for i in range(n)]
    steps = windows(stream.features)
    started = time.monotonic()
    served = score_stream(client, steps, ids)
    scored_s = time.monotonic() - started
    post_outcomes(client, ids, stream)
    live = client.quality("1h", computed_after=time.time())["models"]["champion"]

    model_path = ROOT / "models" / "lstm_omni.onnx"
    model = OnnxModel(model_path)
    model.load()
    offline = np.array([float(model.predict(w[None].astype(np.float32))[0]) for w in steps])
    y = stream.label.astype(np.int8)
    result = {
        "opportunities": n, "seed": seed, "history": HISTORY, "scored_seconds": round(scored_s, 2),
        "live": {"labelled": live["labelled"], "predictions": live["predictions"], "auc": live["auc"],
                 "ece": live["ece"], "brier": live["brier"]},
        "offline": {"labelled": n, "auc": round(auc_roc(y, offline), 6),
                    "ece": round(expected_calibration_error(y, offline), 6)},
        "oracle_auc": round(auc_roc(y, stream.oracle), 6),
        "max_confidence_difference": float(np.max(np.abs(np.round(offline, 6) - np.array(served)))),
    }
    result["agree"] = (live["labelled"] == n and live["predictions"] >= n
                       and abs(live["auc"] - result["offline"]["auc"]) <= TOLERANCE["auc"]
                       and abs(live["ece"] - result["offline"]["ece"]) <= TOLERANCE["ece"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="opportunities")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--url", help="a running service (default: start gunicorn with a fresh ledger)")
    parser.add_argument("--api-key")
    parser.add_argument("--output", help="write the result as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from omni_mev.client import Client

    server = None
    if args.url is None:
        from bench.run import omni_mev

        server = omni_mev("closed loop").start()
        url = server.url
    else:
        url = args.url
    try:
        with Client(url, api_key=args.api_key, timeout=60.0) as client:
            result = run_loop(client, args.n, args.seed)
    finally:
        if server is not None:
            server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
