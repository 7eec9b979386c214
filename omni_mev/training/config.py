"""What determines a training run, apart from the code: a module without torch, so the command line (and `data
check`) can read the defaults without loading it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; the card records it.

    The same seed and data give the same model whatever the machine's speed:
    training stops on max_epochs or patience. max_minutes is only a guard
    against a run that would never end; the card says when it stopped one.
    """

    seed: int = 7
    opportunities: int = 1_000_000  # simulated, when no data is given
    data: str | None = None  # a CSV or Parquet file, or the ledger's URL
    family: str = "auto"  # lstm, trees, ensemble, or auto: the best on validation
    hidden_size: int = 32
    batch_size: int = 1024
    max_epochs: int = 40
    batches_per_epoch: int = 500
    patience: int = 6
    learning_rate: float = 5e-3
    single_vector_share: float = 0.25  # batches trained on seq = 1
    train_share: float = 0.70
    validation_share: float = 0.15
    max_minutes: float = 240.0
    threads: int = 2
    init_weights: str | None = None  # a .pt to start the LSTM from (its size wins over hidden_size)
    device: str = "cpu"  # where the network trains: cpu, cuda, cuda:N or auto (the rest runs on the CPU)
