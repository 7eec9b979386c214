"""Where a GPU pays: predictions/s by batch size on each runtime and device, training time per epoch, and
whether the device changes what training learns.

    python -m bench.devices                     # make bench-devices: bench/results/devices-<date>.json
    python -m bench.devices --quick             # the small version the tests run (smaller batches, 1 epoch)
    python -m bench.devices --out DIR           # write the JSON there instead

It needs only numpy, torch and onnxruntime beside omni_mev's source (no Flask,
gunicorn, Redis or scikit-learn), so it runs as-is on a GPU machine with a
plain scientific Python.

- Inference: the shipped model on single vectors ([batch, 1, 8], what
  /predict/batch and V2 send) at batch sizes 1 to 65,536, for ONNX Runtime on
  the CPU (one thread, as a worker runs it, and every core), PyTorch on the
  CPU (the same two) and on CUDA, and ONNX Runtime's CUDA provider where
  onnxruntime-gpu is installed. Times include moving the batch to the device
  and the answers back.
- Training: the network's epochs (500 batches of 1,024 windows and the
  validation pass) on the CPU (every core) and on CUDA, from the same seed and
  data; the AUC each network reaches on the held-out period must agree within
  0.002.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZES = (1, 64, 1024, 16_384, 65_536)
QUICK_BATCH_SIZES = (1, 64, 1024)
AGREEMENT_GOAL = 0.002


def _rate(predict: Callable[[np.ndarray], Any], batch: np.ndarray, min_seconds: float) -> float:
    """Predictions per second, after two warm-up calls, over at least 3 calls and min_seconds."""
    for _ in range(2):
        predict(batch)
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < min_seconds:
        predict(batch)
        calls += 1
    return len(batch) * calls / (time.perf_counter() - started)


def _onnx_session(path: Path, providers: list[str], threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=providers)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _torch_model(path: Path, device: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from omni_mev.model.lstm import load_state

    torch.set_num_threads(threads)
    model = load_state(path).to(device)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(x).to(device)).cpu().numpy()
        return out

    return predict


def inference(batch_sizes: tuple[int, ...], min_seconds: float, gpus: list[str]) -> list[dict[str, Any]]:
    """predictions/s for each runtime, device and batch size."""
    import onnxruntime as ort

    from omni_mev.training.export import random_raw_features

    cores = os.cpu_count() or 1
    model_dir = ROOT / "models"
    runners: list[tuple[str, str, int, Callable[[], Callable[[np.ndarray], np.ndarray]]]] = [
        ("onnxruntime", "CPUExecutionProvider", 1,
         lambda: _onnx_session(model_dir / "lstm_omni.onnx", ["CPUExecutionProvider"], 1)),
        ("onnxruntime", "CPUExecutionProvider", cores,
         lambda: _onnx_session(model_dir / "lstm_omni.onnx", ["CPUExecutionProvider"], cores)),
        ("pytorch", "cpu", 1, lambda: _torch_model(model_dir / "lstm_omni.pt", "cpu", 1)),
        ("pytorch", "cpu", cores, lambda: _torch_model(model_dir / "lstm_omni.pt", "cpu", cores)),
    ]
    if gpus:
        runners.append(("pytorch", "cuda:0", cores, lambda: _torch_model(model_dir / "lstm_omni.pt", "cuda:0", cores)))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runners.append(("onnxruntime", "CUDAExecutionProvider", cores, lambda: _onnx_session(
            model_dir / "lstm_omni.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"], cores)))
    rng = np.random.default_rng(0)
    batches = {size: random_raw_features(rng, size, 1) for size in batch_sizes}
    rows = []
    for runtime, device, threads, build in runners:
        predict = build()
        for size, batch in batches.items():
            rate = _rate(predict, batch, min_seconds)
            rows.append({"runtime": runtime, "device": device, "cpu_threads": threads, "batch_size": size,
                         "predictions_per_s": round(rate, 1), "us_per_batch": round(1e6 * size / rate, 1)})
            print(f"{runtime:12} {device:22} threads {threads:3} batch {size:6}: {rate:14,.0f} predictions/s",
                  flush=True)
    return rows


def training(devices: list[str], opportunities: int, epochs: int, seed: int,
             batches_per_epoch: int = 500) -> dict[str, Any]:
    """The network trained for `epochs` on each device from the same seed and data: time per epoch, test AUC."""
    import torch

    from omni_mev.evaluation import auc_roc
    from omni_mev.model.lstm import OpportunityLSTM
    from omni_mev.training.data import from_simulation
    from omni_mev.training.simulate import simulate
    from omni_mev.training.train import (TrainConfig, _normalisation_windows, _scored, deterministic_on, fit_network,
                                         split_by_time)

    # The shipped network's size and batch, whatever the rows: the figures compare devices, not budgets.
    config = TrainConfig(seed=seed, max_epochs=epochs, patience=epochs + 1, batches_per_epoch=batches_per_epoch,
                         hidden_size=32, batch_size=1024)
    splits = split_by_time(from_simulation(simulate(opportunities, seed=seed)), config)
    config, _ = config.sized_to(len(splits["train"]))
    results: dict[str, Any] = {"opportunities": opportunities, "epochs": epochs,
                               "batches_per_epoch": config.batches_per_epoch, "batch_size": config.batch_size,
                               "runs": {}}
    for device in devices:
        deterministic_on(device)
        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(seed)
        model = OpportunityLSTM(hidden_size=config.hidden_size)
        model.fit_normalisation(torch.from_numpy(_normalisation_windows(splits["train"], seed)))
        fitting = fit_network(model, splits["train"], splits["validation"], config, progress=lambda line: None,
                              device=device)
        model.eval()
        test = splits["test"]
        seconds = [e["seconds"] for e in fitting["epochs"]]
        per_epoch = np.diff([0.0, *seconds])
        results["runs"][device] = {
            # The first epoch includes the device's warm-up (CUDA context, kernels); the rest are steady.
            "seconds_per_epoch": round(float(np.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)), 2),
            "first_epoch_seconds": round(float(per_epoch[0]), 2),
            "test_auc_with_history": round(auc_roc(test.label, _scored(model.logits, test, None)), 5),
            "test_auc_single_vector": round(auc_roc(test.label, _scored(model.logits, test, 1)), 5),
            "best_validation_loss": round(float(fitting["best_validation_loss"]), 6),
        }
        print(f"training on {device}: {results['runs'][device]}", flush=True)
    if len(devices) > 1:
        first, *others = (results["runs"][d] for d in devices)
        gap = max(abs(first[k] - o[k]) for o in others for k in ("test_auc_with_history", "test_auc_single_vector"))
        results["largest_auc_difference"] = round(gap, 5)
        results["agree_within_goal"] = gap <= AGREEMENT_GOAL
    return results


def service_settings() -> dict[str, Any]:
    """What AI_TORCH_DEVICE=auto and a CUDA provider do on this machine, as the service would meet them."""
    from omni_mev.config import ConfigError
    from omni_mev.devices import check_start_up
    from omni_mev.runtime.onnx_runtime import OnnxModel
    from omni_mev.runtime.torch_runtime import TorchModel
    from omni_mev.training.export import random_raw_features

    onnx, fallback = OnnxModel(ROOT / "models" / "lstm_omni.onnx"), TorchModel(ROOT / "models" / "lstm_omni.pt",
                                                                                  device="auto")
    onnx.load()
    fallback.load()
    windows = random_raw_features(np.random.default_rng(1), 4096, 9)
    checks: dict[str, Any] = {
        "torch_auto_device": fallback.device,
        "fallback_vs_onnx_max_abs_diff": float(np.abs(fallback.predict(windows) - onnx.predict(windows)).max()),
    }
    for name, providers, device in (("AI_TORCH_DEVICE=cuda", ("CPUExecutionProvider",), "cuda"),
                                    ("AI_ORT_PROVIDERS=cuda,cpu", ("CUDAExecutionProvider", "CPUExecutionProvider"),
                                     "cpu")):
        try:
            check_start_up(providers, device)
            checks[name] = "starts"
        except ConfigError as error:
            checks[name] = f"refused: {error}"
    print(json.dumps(checks), flush=True)
    return checks


def machine(gpus: list[str]) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": gpus, "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches, a short training: what the tests run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for devices-<date>.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from omni_mev.devices import cuda_devices, describe

    gpus = cuda_devices()
    devices = ["cpu", *(["cuda:0"] if gpus else [])]
    result: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "quick": args.quick, "machine": machine(gpus),
                              "devices": [describe(d) for d in devices]}
    print(json.dumps(result["machine"]), flush=True)
    result["service_settings"] = service_settings()
    result["inference"] = inference(QUICK_BATCH_SIZES if args.quick else BATCH_SIZES, 0.05 if args.quick else 0.5,
                                    gpus)
    if args.quick:
        result["training"] = training(devices, 20_000, epochs=2, seed=7, batches_per_epoch=20)
    else:
        result["training"] = training(devices, 200_000, epochs=3, seed=7)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"devices-{result['date'][:10]}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if result["training"].get("agree_within_goal", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
