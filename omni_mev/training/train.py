"""Train the LSTM on simulated streams, calibrate it, compare baselines, export and write the card."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omni_mev.evaluation import reliability_curve
from omni_mev.features import FEATURE_NAMES, MAX_SEQUENCE
from omni_mev.model.lstm import OpportunityLSTM
from omni_mev.training import evaluate
from omni_mev.training.export import OPSET, export_onnx, parity, sha256_of
from omni_mev.training.simulate import OpportunityStream, simulate

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.78
MODEL_NAME = "lstm_omni"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; the card records it."""

    seed: int = 7
    opportunities: int = 1_000_000
    hidden_size: int = 32
    batch_size: int = 1024
    max_epochs: int = 40
    batches_per_epoch: int = 500
    patience: int = 6
    learning_rate: float = 5e-3
    single_vector_share: float = 0.25  # batches trained on seq = 1
    train_share: float = 0.70
    validation_share: float = 0.15
    max_minutes: float = 7.0
    threads: int = 2


@dataclass
class Split:
    """A contiguous time slice of the stream and the indices scored in it."""

    name: str
    stream: OpportunityStream

    @property
    def scored(self) -> np.ndarray:
        """Indices with a full history inside the split, the same for every model."""
        return np.arange(MAX_SEQUENCE - 1, len(self.stream))

    def windows(self, index: np.ndarray, length: int) -> np.ndarray:
        """Raw windows [len(index), length, 8], the opportunity itself last."""
        offsets = np.arange(-length + 1, 1)
        return self.stream.features[index[:, None] + offsets[None, :]]


def split_by_time(stream: OpportunityStream, config: TrainConfig) -> dict[str, Split]:
    """Train, validation and test in time order: the test set is the future."""
    n = len(stream)
    train_end = int(n * config.train_share)
    validation_end = int(n * (config.train_share + config.validation_share))
    bounds = {"train": (0, train_end), "validation": (train_end, validation_end), "test": (validation_end, n)}
    return {name: Split(name, stream.slice(lo, hi)) for name, (lo, hi) in bounds.items()}


def _score(fn, split: Split, length: int, batch: int = 8192) -> np.ndarray:
    """fn over the split's scored windows of `length`, in batches, as a flat array."""
    index = split.scored
    out = []
    with torch.no_grad():
        for start in range(0, len(index), batch):
            x = torch.from_numpy(split.windows(index[start:start + batch], length))
            out.append(fn(x).squeeze(-1).numpy())
    return np.concatenate(out)


def _logits(model: OpportunityLSTM, split: Split, length: int) -> np.ndarray:
    return _score(model.logits, split, length)


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def fit_network(model: OpportunityLSTM, train: Split, validation: Split, config: TrainConfig) -> dict:
    """Adam on random windows of random length; early stopping on validation loss."""
    rng = np.random.default_rng(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=1)
    loss_fn = nn.BCEWithLogitsLoss()
    labels = torch.from_numpy(train.stream.label.astype(np.float32))
    y_val = validation.stream.label[validation.scored]
    best_loss, best_state, best_epoch, stale = np.inf, None, 0, 0
    history = []
    started = time.monotonic()
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        running = 0.0
        for _ in range(config.batches_per_epoch):
            if rng.uniform() < config.single_vector_share:
                length = 1
            else:
                length = int(rng.integers(2, MAX_SEQUENCE + 1))
            index = rng.integers(length - 1, len(train.stream), size=config.batch_size)
            x = torch.from_numpy(train.windows(index, length))
            loss = loss_fn(model.logits(x).squeeze(-1), labels[index])
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            running += loss.item()
        model.eval()
        val_loss = 0.5 * (
            _bce(_logits(model, validation, MAX_SEQUENCE), y_val) + _bce(_logits(model, validation, 1), y_val)
        )
        scheduler.step(val_loss)
        elapsed = time.monotonic() - started
        history.append({"epoch": epoch, "train_loss": running / config.batches_per_epoch,
                        "validation_loss": val_loss, "seconds": round(elapsed, 1)})
        log.info("epoch %d train %.4f validation %.4f (%.0fs)", epoch, history[-1]["train_loss"], val_loss, elapsed)
        if val_loss < best_loss - 1e-5:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= config.patience or elapsed > config.max_minutes * 60:
            break
    model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "best_validation_loss": best_loss, "epochs": history}


def calibrate(model: OpportunityLSTM, validation: Split) -> dict:
    """Platt scaling of the logit on validation: one fit with history, one without."""
    y = validation.stream.label[validation.scored]
    fitted = {}
    for slot, (name, length) in enumerate((("history", MAX_SEQUENCE), ("single_vector", 1))):
        scale, bias = _platt(_logits(model, validation, length), y)
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


def predict(model: OpportunityLSTM, split: Split, length: int) -> np.ndarray:
    """Calibrated confidences for the split's scored indices."""
    return _score(model, split, length)


def baselines(splits: dict[str, Split], seed: int) -> dict[str, np.ndarray]:
    """Single-vector baselines trained on the same data: test-set confidences."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from omni_mev.model.lstm import derive

    def single(split: Split, logistic: bool) -> np.ndarray:
        x = split.stream.features
        if logistic:  # the same log/logit transforms the network uses
            x = derive(torch.from_numpy(x)[:, None, :])[:, 0, :-2].numpy()
        return x

    train, test = splits["train"], splits["test"]
    y = train.stream.label
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    logistic.fit(single(train, True), y)
    # Early stopping on a slice of the training data, as the LSTM stops on validation.
    boosting = HistGradientBoostingClassifier(
        max_iter=500, learning_rate=0.1, early_stopping=True, validation_fraction=0.15, random_state=seed
    )
    boosting.fit(single(train, False), y)
    return {
        "logistic_regression": logistic.predict_proba(single(test, True)[test.scored])[:, 1],
        "hist_gradient_boosting": boosting.predict_proba(single(test, False)[test.scored])[:, 1],
    }


def reliability_png(curves: dict[str, list], path: Path) -> None:
    """Reliability diagram of the test-set confidences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, rows in curves.items():
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", markersize=3, label=name)
    ax.axvline(DEFAULT_THRESHOLD, color="red", linewidth=0.8, linestyle="--", label="threshold 0.78")
    ax.set_xlabel("predicted confidence")
    ax.set_ylabel("observed success rate")
    ax.set_title("Reliability on the held-out test period")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(config: TrainConfig, output_dir: Path, docs_dir: Path | None = None,
          command: str = "omni-mev train") -> dict:
    """Run the whole pipeline and write the ONNX model, the state dict and the card."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    output_dir.mkdir(parents=True, exist_ok=True)

    stream = simulate(config.opportunities, seed=config.seed)
    splits = split_by_time(stream, config)
    train_split, validation, test = splits["train"], splits["validation"], splits["test"]
    log.info("simulated %d opportunities in %.0fs", len(stream), time.monotonic() - started)

    model = OpportunityLSTM(hidden_size=config.hidden_size)
    sample = np.random.default_rng(config.seed).integers(MAX_SEQUENCE - 1, len(train_split.stream), 4096)
    model.fit_normalisation(torch.from_numpy(train_split.windows(sample, MAX_SEQUENCE)))
    fitting = fit_network(model, train_split, validation, config)
    calibration = calibrate(model, validation)

    # Threshold: maximise simulated PnL on validation (never on test).
    val_p = predict(model, validation, MAX_SEQUENCE)
    recommended = evaluate.pnl_optimal_threshold(val_p, validation.stream.pnl_usd[validation.scored])
    thresholds = {"recommended": recommended, "default": DEFAULT_THRESHOLD}

    y_test = test.stream.label[test.scored]
    pnl_test = test.stream.pnl_usd[test.scored]
    confidences = {
        "lstm_with_history": predict(model, test, MAX_SEQUENCE),
        "lstm_single_vector": predict(model, test, 1),
        **baselines(splits, config.seed),
        "oracle": test.stream.oracle[test.scored],
    }
    results = {name: evaluate.summarise(y_test, p, thresholds, pnl_test) for name, p in confidences.items()}

    onnx_path = output_dir / f"{MODEL_NAME}.onnx"
    state_path = output_dir / f"{MODEL_NAME}.pt"
    export_onnx(model, onnx_path)
    torch.save(model.state_dict(), state_path)
    max_diff = parity(model, onnx_path)
    version = sha256_of(onnx_path)

    card = {
        "name": MODEL_NAME,
        "version": version,
        "version_short": version[:12],
        "created_by": command,
        "framework": {"torch": torch.__version__.split("+")[0], "onnx_opset": OPSET},
        "inputs": {
            "features": {"shape": ["batch", "seq", len(FEATURE_NAMES)], "dtype": "float32",
                         "order": list(FEATURE_NAMES), "max_seq": MAX_SEQUENCE},
        },
        "outputs": {"confidence": {"shape": ["batch", 1], "dtype": "float32"}},
        "architecture": {"type": "LSTM", "hidden_size": config.hidden_size, "layers": 1,
                         "normalisation": "inside the graph (log/logit transforms, training statistics)"},
        "training": {"config": asdict(config), "data": stream.describe(),
                     "split": {name: len(s.stream) for name, s in splits.items()},
                     "scored_test_opportunities": int(len(y_test)),
                     **fitting, "calibration": calibration},
        "thresholds": {"recommended": round(recommended, 4), "default": DEFAULT_THRESHOLD,
                       "recommended_rule": "maximises simulated PnL on the validation period"},
        "test_metrics": results,
        "training_range": _observed_range(train_split.stream.features),
        "onnx_parity_max_abs_diff": max_diff,
        "training_seconds": round(time.monotonic() - started, 1),
    }
    (output_dir / f"{MODEL_NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        curves = {name: reliability_curve(y_test, confidences[name])
                  for name in ("lstm_with_history", "lstm_single_vector", "hist_gradient_boosting", "oracle")}
        reliability_png(curves, docs_dir / "reliability.png")
    log.info("wrote %s (version %s) in %.0fs", onnx_path, version[:12], card["training_seconds"])
    return card


def _observed_range(features: np.ndarray) -> dict[str, list[float]]:
    """Per-feature minimum and maximum of the training data: the drift bounds."""
    lo, hi = features.min(axis=0), features.max(axis=0)
    return {name: [float(a), float(b)] for name, a, b in zip(FEATURE_NAMES, lo, hi)}
