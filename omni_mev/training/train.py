"""Train on simulated streams or a user's own outcomes: LSTM, trees, their blend; calibrate, compare, export, card."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omni_mev.decision import DEFAULT_THRESHOLD
from omni_mev.devices import describe, resolve_torch_device
from omni_mev.evaluation import ece_evidence, log_losses, reliability_curve
from omni_mev.features import FEATURE_NAMES, MAX_SEQUENCE
from omni_mev.model.lstm import HIDDEN_SIZE, OpportunityLSTM, load_state
from omni_mev.plausibility import support_bounds
from omni_mev.reliability_plot import reliability_png
from omni_mev.training import evaluate
from omni_mev.training.config import TrainConfig
from omni_mev.training.data import Dataset, from_simulation, iso_time, load
from omni_mev.training.ensemble import Blend, export_ensemble, fit_blend, trees_logit, trees_probability
from omni_mev.training.ensemble import parity as graph_parity
from omni_mev.training.export import OPSET, PARITY_SHAPES, export_onnx, random_raw_features, sha256_of
from omni_mev.training.report import served_test_row
from omni_mev.training.simulate import simulate
from omni_mev.training.thresholds import RULES as DECISION_RULES
from omni_mev.training.thresholds import choose as choose_threshold

log = logging.getLogger(__name__)
MODEL_NAME = "lstm_omni"


FAMILIES = ("lstm", "trees", "ensemble")
ENSEMBLE_MARGIN_SE = 2.0


def deterministic_on(device: str) -> None:
    """Deterministic kernels, on the CPU and on CUDA (cuBLAS needs its workspace fixed before it starts)."""
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def split_by_time(dataset: Dataset, config: TrainConfig) -> dict[str, Dataset]:
    """Train, validation and test in time order: the test set is the future."""
    order = np.argsort(dataset.observed_at, kind="stable")
    n = len(order)
    train_end = int(n * config.train_share)
    validation_end = int(n * (config.train_share + config.validation_share))
    bounds = {"train": (0, train_end), "validation": (train_end, validation_end), "test": (validation_end, n)}
    return {name: dataset.subset(order[lo:hi]) for name, (lo, hi) in bounds.items()}


def split_periods(splits: dict[str, Dataset]) -> dict[str, Any]:
    """When each split's rows were observed, for the card: `evaluate` scores only what came after `fitted_until`
    (the validation period fits the calibration and chooses the family, so it is not held out either)."""
    periods: dict[str, Any] = {name: [iso_time(float(part.observed_at.min())), iso_time(float(part.observed_at.max()))]
                               for name, part in splits.items() if len(part)}
    fitted_until = max(float(part.observed_at.max()) for part in (splits["train"], splits["validation"]) if len(part))
    periods.update(fitted_until=iso_time(fitted_until), fitted_until_epoch_s=fitted_until)
    return periods


def _scored(fn, data: Dataset, length: int | None, batch: int = 8192, device: str = "cpu") -> np.ndarray:
    """fn over every example of `data`, in batches: with all its history (length None) or `length` steps."""
    out = np.empty(len(data), dtype=np.float64)
    groups = data.scored_windows() if length is None else [(np.arange(len(data)), None)]
    with torch.no_grad():
        for index, windows in groups:
            for start in range(0, len(index), batch):
                part = index[start:start + batch]
                x = windows[start:start + batch] if windows is not None else data.windows(part, length or 1)
                scores = fn(torch.from_numpy(np.ascontiguousarray(x)).to(device))
                out[part] = scores.squeeze(-1).double().cpu().numpy()
    return out


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def _batch_windows(train: Dataset, rng: np.random.Generator, config: TrainConfig,
                   history: np.ndarray, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """A training batch: a random window length (1 a quarter of the time), examples that have that much history."""
    length = 1
    if longest > 1 and rng.uniform() >= config.single_vector_share:
        length = int(rng.integers(2, longest + 1))
    eligible = np.flatnonzero(history >= length - 1)
    index = eligible[rng.integers(0, len(eligible), size=config.batch_size)]
    return train.windows(index, length), index


def fit_network(model: OpportunityLSTM, train: Dataset, validation: Dataset, config: TrainConfig,
                progress: Callable[[str], None] = log.info, device: str = "cpu") -> dict:
    """Adam on random windows of random length; early stopping on validation loss.

    On a GPU only the arithmetic moves: batches are drawn on the CPU from the
    same random stream, so the device changes the result by floating-point
    noise only. The model is back on the CPU when this returns.
    """
    rng = np.random.default_rng(config.seed)
    # sized_to() has drawn these from the data when no flag set them.
    assert config.learning_rate is not None and config.max_epochs is not None
    assert config.batches_per_epoch is not None
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=1)
    loss_fn = nn.BCEWithLogitsLoss()
    labels = torch.from_numpy(train.label.astype(np.float32)).to(device)
    history = train.history_length
    longest = int(min(MAX_SEQUENCE, history.max() + 1))
    y_val = validation.label
    best_loss, best_epoch, stale = np.inf, 0, 0
    best_state: dict[str, torch.Tensor] = model.state_dict()
    epochs = []
    stopped_by = "max_epochs"
    started = time.monotonic()
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        running = 0.0
        for _ in range(config.batches_per_epoch):
            windows, index = _batch_windows(train, rng, config, history, longest)
            loss = loss_fn(model.logits(torch.from_numpy(windows).to(device)).squeeze(-1),
                           labels[torch.from_numpy(index).to(device)])
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            running += loss.item()
        model.eval()
        val_loss = 0.5 * (_bce(_scored(model.logits, validation, None, device=device), y_val)
                          + _bce(_scored(model.logits, validation, 1, device=device), y_val))
        scheduler.step(val_loss)
        elapsed = time.monotonic() - started
        epochs.append({"epoch": epoch, "train_loss": running / config.batches_per_epoch,
                       "validation_loss": val_loss, "seconds": round(elapsed, 1)})
        remaining = (config.max_epochs - epoch) * elapsed / epoch
        progress(f"epoch {epoch}/{config.max_epochs}: train loss {epochs[-1]['train_loss']:.4f}, validation loss "
                 f"{val_loss:.4f}, {elapsed:.0f}s, at most {remaining:.0f}s more (early stopping may end it sooner)")
        if val_loss < best_loss - 1e-5:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= config.patience:
            stopped_by = "patience"
            break
        if elapsed > config.max_minutes * 60:
            stopped_by = "time_budget"
            progress(f"stopped by the {config.max_minutes:g}-minute guard: this model depends on the machine's speed")
            break
    model.load_state_dict(best_state)
    model.cpu()
    return {"best_epoch": best_epoch, "best_validation_loss": best_loss, "stopped_by": stopped_by,
            "epochs": epochs}


def calibrate(model: OpportunityLSTM, validation: Dataset) -> dict:
    """Platt scaling of the logit on validation: one fit with history, one without."""
    y = validation.label
    fitted = {}
    for slot, (name, length) in enumerate((("history", None), ("single_vector", 1))):
        scale, bias = _platt(_scored(model.logits, validation, length), y)
        model.calibration_scale[slot] = scale
        model.calibration_bias[slot] = bias
        fitted[name] = {"scale": scale, "bias": bias}
    return {"method": "platt", **fitted}


def _platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(scale, bias) minimising the log loss of sigmoid(scale * logit + bias)."""
    z = torch.from_numpy(logits.astype(np.float64))
    target = torch.from_numpy(y.astype(np.float64))
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], lr=0.5, max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z * params[0] + params[1], target)
        loss.backward()
        return loss

    optimiser.step(closure)
    scale, bias = params.detach().tolist()
    return scale, bias


def _current(data: Dataset) -> np.ndarray:
    """The opportunities themselves (no history), float32 values as float64."""
    return data.vectors[data.current].astype(np.float64)


def fit_trees(train: Dataset, seed: int) -> Any:
    """Gradient-boosted trees on the current opportunity's raw features, early-stopped on a slice of train."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=500, learning_rate=0.1, early_stopping=True,
                                          validation_fraction=0.15, random_state=seed).fit(_current(train),
                                                                                           train.label)


def fit_logistic(train: Dataset) -> Any:
    """Logistic regression on the network's own transforms of the current opportunity: a baseline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(_derived(train), train.label)


def _derived(data: Dataset) -> np.ndarray:
    from omni_mev.model.lstm import derive

    return derive(torch.from_numpy(data.vectors[data.current])[:, None, :])[:, 0, :-2].numpy()


@dataclass
class Members:
    """The trained models whose confidences the families are made of."""

    lstm: OpportunityLSTM
    trees: Any
    blend: Blend | None = None

    def lstm_logit(self, data: Dataset) -> np.ndarray:
        return _scored(self.lstm.calibrated_logits, data, None)

    def trees_logit(self, data: Dataset) -> np.ndarray:
        return self.trees.decision_function(_current(data))

    def confidences(self, family: str, data: Dataset) -> np.ndarray:
        if family == "lstm":
            return _sigmoid(self.lstm_logit(data))
        if family == "trees":
            return _sigmoid(self.trees_logit(data))
        assert self.blend is not None  # fitted before any family is chosen
        return self.blend.apply(self.lstm_logit(data), self.trees_logit(data))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def choose_family(members: Members, validation: Dataset, requested: str) -> tuple[str, dict[str, Any]]:
    """Each family's validation log loss (the blend's cross-fitted on two halves), and the family to ship.

    The ensemble costs more per request and makes the PyTorch fallback a
    stand-in, so it ships only when it beats the better single member by more
    than noise: ENSEMBLE_MARGIN_SE standard errors of the paired per-example
    difference in log loss.
    """
    y = validation.label
    z_lstm, z_trees = members.lstm_logit(validation), members.trees_logit(validation)
    half = len(y) // 2
    blended = np.empty(len(y))
    for fit, score in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
        blended[score] = fit_blend(z_lstm[fit], z_trees[fit], y[fit]).apply(z_lstm[score], z_trees[score])
    losses = {"lstm": log_losses(y, _sigmoid(z_lstm)), "trees": log_losses(y, _sigmoid(z_trees)),
              "ensemble": log_losses(y, blended)}
    single = min(("lstm", "trees"), key=lambda name: losses[name].mean())
    gain = losses[single] - losses["ensemble"]
    standard_error = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
    ensemble_wins = bool(gain.mean() > ENSEMBLE_MARGIN_SE * standard_error)
    family = requested if requested != "auto" else "ensemble" if ensemble_wins else single
    report: dict[str, Any] = {name: round(float(value.mean()), 6) for name, value in losses.items()}
    report["ensemble_gain_over_" + single] = {"mean": round(float(gain.mean()), 6),
                                              "standard_error": round(standard_error, 6),
                                              "significant": ensemble_wins}
    return family, report


def export(members: Members, family: str, output_dir: Path, validation: Dataset) -> tuple[Path, float]:
    """Write the served graph (and the LSTM's weights, the PyTorch fallback); parity against the native models."""
    from omni_mev.training.ensemble import export_trees

    onnx_path = output_dir / f"{MODEL_NAME}.onnx"
    torch.save(members.lstm.state_dict(), output_dir / f"{MODEL_NAME}.pt")
    with tempfile.TemporaryDirectory() as scratch:
        lstm_path = onnx_path if family == "lstm" else Path(scratch) / "lstm.onnx"
        export_onnx(members.lstm, lstm_path)
        if family == "trees":
            export_trees(members.trees, onnx_path)
        elif family == "ensemble":
            assert members.blend is not None
            export_ensemble(lstm_path, members.trees, members.blend, onnx_path)
    rng = np.random.default_rng(0)
    shapes = [random_raw_features(rng, batch, seq) for batch, seq in PARITY_SHAPES]
    shapes.append(validation.windows(np.arange(min(len(validation), 4096)), 1))

    def native(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z_lstm = members.lstm.calibrated_logits(torch.from_numpy(windows)).double().numpy().reshape(-1)
        if family == "lstm":
            return _sigmoid(z_lstm)
        if family == "trees":
            return trees_probability(members.trees, windows)
        assert members.blend is not None
        return members.blend.apply(z_lstm, trees_logit(members.trees, windows))

    return onnx_path, graph_parity(onnx_path, native, shapes)


def _normalisation_windows(train: Dataset, seed: int) -> np.ndarray:
    """Training windows for the standardisation statistics: the longest history enough examples have."""
    history = train.history_length
    length = next(k for k in range(MAX_SEQUENCE, 0, -1) if (history >= k - 1).sum() >= min(512, len(train)))
    eligible = np.flatnonzero(history >= length - 1)
    return train.windows(eligible[np.random.default_rng(seed).integers(0, len(eligible), 4096)], length)


def train(config: TrainConfig, output_dir: Path, docs_dir: Path | None = None,
          command: str = "omni-mev train", progress: Callable[[str], None] = log.info,
          dataset: Dataset | None = None) -> dict:
    """Run the whole pipeline and write the ONNX model, the state dict and the card.

    The data: `dataset` when given (a ledger window read by the caller), else
    config.data, else the simulator.
    """
    if config.family not in (*FAMILIES, "auto"):
        raise ValueError(f"family {config.family!r}; choose lstm, trees, ensemble or auto")
    started = time.monotonic()
    device = resolve_torch_device(config.device, setting="--device")
    deterministic_on(device)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)

    if dataset is None:
        dataset = load(config.data) if config.data else from_simulation(simulate(config.opportunities,
                                                                                 seed=config.seed))
    splits = split_by_time(dataset, config)
    output_dir.mkdir(parents=True, exist_ok=True)  # only once the data passed its checks
    train_split, validation, test = splits["train"], splits["validation"], splits["test"]
    progress(f"{len(dataset):,} opportunities from {dataset.source}: train {len(train_split):,}, "
             f"validation {len(validation):,}, test {len(test):,} (in time order)")
    config, budget = config.sized_to(len(train_split))
    progress(f"budget: batches of {config.batch_size}, {config.batches_per_epoch} per epoch, at most "
             f"{config.max_epochs} epochs, {config.hidden_size} hidden units, learning rate {config.learning_rate:g}"
             f" (from the data: {', '.join(budget['from_the_data']) or 'none'})")

    if config.init_weights:
        # Warm start (retraining): the served network, its input statistics kept, adapts to the new data.
        model = load_state(config.init_weights)
        model.train()
    else:
        model = OpportunityLSTM(hidden_size=config.hidden_size or HIDDEN_SIZE)
        model.fit_normalisation(torch.from_numpy(_normalisation_windows(train_split, config.seed)))
    progress(f"training the network on {describe(device)}")
    fitting = fit_network(model, train_split, validation, config, progress, device=device)
    calibration = calibrate(model, validation)
    members = Members(model, fit_trees(train_split, config.seed))
    members.blend = fit_blend(members.lstm_logit(validation), members.trees_logit(validation), validation.label)
    family, validation_losses = choose_family(members, validation, config.family)
    progress(f"validation log loss: {validation_losses}; serving {family}")

    thresholds: dict[str, float] = {"default": DEFAULT_THRESHOLD}
    validation_confidence = members.confidences(family, validation)
    if validation.has_pnl:
        reported = np.isfinite(validation.pnl)
        thresholds["recommended"] = evaluate.pnl_optimal_threshold(
            validation_confidence[reported], validation.pnl[reported])
    decision = choose_threshold(validation_confidence, validation.label,
                                validation.pnl if validation.has_pnl else None)
    thresholds["decision"] = decision["decision"]
    progress(f"decision threshold {decision['decision']:g} ({decision['rule']} rule: {decision['evidence']})")

    has_history = bool((test.history_length > 0).any())
    confidences = {
        **({"lstm_with_history": members.confidences("lstm", test)} if has_history else {}),
        "lstm_single_vector": _sigmoid(_scored(model.calibrated_logits, test, 1)),
        "logistic_regression": fit_logistic(train_split).predict_proba(_derived(test))[:, 1],
        "hist_gradient_boosting": members.confidences("trees", test),
        "ensemble": members.confidences("ensemble", test),
        **({"oracle": test.oracle} if test.oracle is not None else {}),
    }
    pnl_test = np.nan_to_num(test.pnl) if test.has_pnl else None
    results = {name: evaluate.summarise(test.label, p, thresholds, pnl_test) for name, p in confidences.items()}

    onnx_path, max_diff = export(members, family, output_dir, validation)
    version = sha256_of(onnx_path)
    card = {
        "name": MODEL_NAME,
        "version": version,
        "version_short": version[:12],
        "created_by": command,
        "family": family,
        "framework": {"torch": torch.__version__.split("+")[0], "onnx_opset": OPSET},
        "inputs": {
            "features": {"shape": ["batch", "seq", len(FEATURE_NAMES)], "dtype": "float32",
                         "order": list(FEATURE_NAMES), "max_seq": MAX_SEQUENCE},
        },
        "outputs": {"confidence": {"shape": ["batch", 1], "dtype": "float32"}},
        "architecture": {
            "lstm": {"hidden_size": model.hidden_size, "layers": 1, "warm_start": config.init_weights is not None,
                     "normalisation": "inside the graph (log/logit transforms, training statistics)"},
            "trees": {"type": "HistGradientBoostingClassifier", "iterations": int(members.trees.n_iter_),
                      "reads": "the current opportunity's 8 raw features"},
            "ensemble": {"blend": asdict(members.blend),
                         "rule": "sigmoid(lstm * lstm_logit + trees * trees_logit + bias), fitted on validation"},
            "served": family,
            "pytorch_fallback": "the LSTM alone" + ("" if family == "lstm" else
                                                    f" (a degraded stand-in for the {family} model)"),
        },
        "training": {"config": asdict(config), "budget": budget, "device": describe(device),
                     "data": _data_summary(dataset),
                     "split": {name: len(part) for name, part in splits.items()},
                     "periods": split_periods(splits),
                     "validation_log_loss": validation_losses, **fitting, "calibration": calibration},
        "thresholds": {**{k: round(v, 4) for k, v in thresholds.items()}, "recommended_rule": (
            "maximises realised PnL on the validation period" if "recommended" in thresholds
            else "none: the data has no realised_pnl_usd; see decision"),
            "decision_rule": DECISION_RULES[decision["rule"]], "decision_evidence": decision["evidence"]},
        "test_metrics": results,
        # What the served model's test ECE rests on, and whether that is enough to mean much.
        "ece_evidence": ece_evidence(test.label, confidences[served_test_row(family, results)]),
        "oracle": "present: the simulator's true probability" if test.oracle is not None else
                  "absent: real outcomes have no known true probability",
        "training_range": _observed_range(train_split.vectors[train_split.current]),
        "support": support_bounds(train_split.vectors[train_split.current]),
        "onnx_parity_max_abs_diff": max_diff,
        "training_seconds": round(time.monotonic() - started, 1),
    }
    (output_dir / f"{MODEL_NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        curves = {name: reliability_curve(test.label, p) for name, p in confidences.items()
                  if name in ("lstm_with_history", "lstm_single_vector", "hist_gradient_boosting", "ensemble",
                              "oracle")}
        reliability_png(curves, docs_dir / "reliability.png", f"Reliability on the held-out test period "
                        f"({len(test):,} opportunities of {dataset.source})", DEFAULT_THRESHOLD)
    progress(f"wrote {onnx_path} ({family}, version {version[:12]}) in {card['training_seconds']:.0f}s")
    return card


def _data_summary(dataset: Dataset) -> dict[str, Any]:
    summary = dataset.describe()
    summary.pop("feature_ranges")
    return summary


def _observed_range(features: np.ndarray) -> dict[str, list[float]]:
    """Per-feature minimum and maximum of the training data: the drift counters' bounds."""
    lo, hi = features.min(axis=0), features.max(axis=0)
    return {name: [float(a), float(b)] for name, a, b in zip(FEATURE_NAMES, lo, hi)}
