"""ONNX export of the LSTM with dynamic batch and sequence axes, and a parity check."""
from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from omni_mev.features import MAX_SEQUENCE, N_FEATURES
from omni_mev.model.lstm import OpportunityLSTM

log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "confidence"
OPSET = 18
# Shapes that differ from the export example, so a frozen axis would show up.
PARITY_SHAPES = ((1, 1), (3, 7), (64, 32), (1024, 1), (5, 2))


def export_onnx(model: OpportunityLSTM, path: Path) -> None:
    """Export with the dynamo exporter (torch's default since 2.9), in a fresh process.

    In torch 2.13 a second torch.export of an nn.LSTM in the same process traces
    the sequence axis as static (it keeps the example's length); the legacy
    TorchScript exporter does not, but it is deprecated and slated for removal.
    So the export runs in a child process every time, and the result is checked.
    """
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "weights.pt"
        torch.save(model.state_dict(), weights)
        child = subprocess.run([sys.executable, "-m", __name__, str(weights), str(path)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise RuntimeError(f"ONNX export failed:\n{child.stderr[-4000:]}")
    dims = [d.dim_param or d.dim_value for d in _input_dims(path)]
    if not (isinstance(dims[0], str) and isinstance(dims[1], str) and dims[2] == N_FEATURES):
        raise RuntimeError(f"exported input shape {dims} is not [batch, seq, {N_FEATURES}]")


def _input_dims(path: Path):
    import onnx

    return onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim


def _export_in_this_process(model: OpportunityLSTM, path: Path) -> None:
    """The example input has batch 4 and sequence 8; both axes are declared
    dynamic through torch.export Dims, so the graph keeps `batch` and `seq`
    symbolic (the parity check runs other shapes to prove it)."""
    model.eval()
    example = torch.rand(4, 8, N_FEATURES) + 0.5
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=MAX_SEQUENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch, 1: seq},),
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:  # dynamo=True always returns one
        raise RuntimeError("torch.onnx.export returned no program")
    # Weights inline: the service ships one self-contained file.
    program.save(str(path), external_data=False)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parity(model: OpportunityLSTM, path: Path, seed: int = 0) -> float:
    """Max |ONNX Runtime - PyTorch| over PARITY_SHAPES on realistic raw inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch, seq in PARITY_SHAPES:
        x = random_raw_features(rng, batch, seq)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {got.shape} != {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def random_raw_features(rng: np.random.Generator, batch: int, seq: int) -> np.ndarray:
    """Plausible raw feature windows [batch, seq, 8], time of day increasing."""
    x = np.empty((batch, seq, N_FEATURES), dtype=np.float32)
    x[..., 0] = rng.lognormal(2.0, 1.2, (batch, seq))
    x[..., 1] = 1.0 + rng.exponential(0.008, (batch, seq))
    x[..., 2] = rng.integers(2, 7, (batch, seq))
    x[..., 3] = rng.uniform(0.2, 0.8, (batch, seq))
    x[..., 4] = rng.uniform(0.0, 1.0, (batch, seq))
    start = rng.uniform(0.0, 1.0, (batch, 1))
    x[..., 5] = (start + np.cumsum(rng.exponential(1e-4, (batch, seq)), axis=1)) % 1.0
    x[..., 6] = rng.integers(1, 5, (batch, seq))
    x[..., 7] = rng.lognormal(0.3, 1.0, (batch, seq))
    return x


if __name__ == "__main__":
    from omni_mev.model.lstm import load_state

    _export_in_this_process(load_state(sys.argv[1]), Path(sys.argv[2]))
