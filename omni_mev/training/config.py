"""What determines a training run, apart from the code: a module without torch, so the command line (and `data
check`) can read the defaults without loading it.

The training budget follows the data unless a flag sets it (sized_to):

| rows in the training split (n) | batch size | batches per epoch | hidden units |
|---|---|---|---|
| any | the power of two at or below n / 64, in 64..1024 | n / batch size (one pass), in 10..500 | 8 below 50,000; |
| | | | 16 below 200,000; 32 from there |

Epochs are at most 40, and early stopping (patience 6 epochs on the
validation loss, the best weights restored) usually ends training sooner. A
warm start (retraining from the served network) learns at a fifth of the
rate, so a small window of recent outcomes adjusts the network rather than
replacing it. A million simulated rows (700,000 to train on) get the budget
the shipped model was trained with: 1,024 x 500 per epoch, 32 units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

MAX_BATCH = 1024
MIN_BATCH = 64
ROWS_PER_BATCH = 64  # the batch is about n / 64: small data gets more, smaller steps per pass
MIN_BATCHES_PER_EPOCH = 10
MAX_BATCHES_PER_EPOCH = 500
MAX_EPOCHS = 40
# Hidden units by the rows to train on: (fewer than this many rows, units).
HIDDEN_BY_ROWS = ((50_000, 8), (200_000, 16))
LARGEST_HIDDEN = 32
LEARNING_RATE = 5e-3
WARM_START_RATE_SHARE = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; the card records it (sized: every None below filled in).

    The same seed and data give the same model whatever the machine's speed:
    training stops on max_epochs or patience. max_minutes is only a guard
    against a run that would never end; the card says when it stopped one.
    None: from the data (sized_to).
    """

    seed: int = 7
    opportunities: int = 1_000_000  # simulated, when no data is given
    data: str | None = None  # a CSV or Parquet file, or the ledger's URL
    family: str = "auto"  # lstm, trees, ensemble, or auto: the best on validation
    hidden_size: int | None = None
    batch_size: int | None = None
    max_epochs: int | None = None
    batches_per_epoch: int | None = None
    patience: int = 6
    learning_rate: float | None = None
    single_vector_share: float = 0.25  # batches trained on seq = 1
    train_share: float = 0.70
    validation_share: float = 0.15
    max_minutes: float = 240.0
    # One thread: with two, torch's CPU kernels gave runs whose weights differed in the sixth decimal (3 runs of
    # the example file: 2 hashes), and one costs little (40,000 simulated rows: 18.1 s against 16.8 s).
    threads: int = 1
    init_weights: str | None = None  # a .pt to start the LSTM from (its size wins over hidden_size)
    device: str = "cpu"  # where the network trains: cpu, cuda, cuda:N or auto (the rest runs on the CPU)

    def sized_to(self, train_rows: int) -> tuple[TrainConfig, dict[str, Any]]:
        """This configuration with the budget drawn from the rows to train on (module docstring), and what was
        drawn, for the card."""
        batch = self.batch_size or min(MAX_BATCH, max(MIN_BATCH, 2 ** int(math.log2(max(train_rows, 1)
                                                                                    / ROWS_PER_BATCH + 1))))
        drawn = {
            "batch_size": batch,
            "batches_per_epoch": min(MAX_BATCHES_PER_EPOCH, max(MIN_BATCHES_PER_EPOCH, math.ceil(train_rows / batch))),
            "max_epochs": MAX_EPOCHS,
            "hidden_size": next((units for below, units in HIDDEN_BY_ROWS if train_rows < below), LARGEST_HIDDEN),
            "learning_rate": LEARNING_RATE * (WARM_START_RATE_SHARE if self.init_weights else 1.0),
        }
        chosen: dict[str, Any] = {name: getattr(self, name) if getattr(self, name) is not None else value
                                  for name, value in drawn.items()}
        return replace(self, **chosen), {
            "train_rows": train_rows,
            "from_the_data": sorted(name for name in drawn if getattr(self, name) is None),
            "from_flags": sorted(name for name in drawn if getattr(self, name) is not None),
        }
