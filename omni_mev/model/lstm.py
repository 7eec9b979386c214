"""The LSTM that scores an opportunity given the recent opportunities of its stream."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

HIDDEN_SIZE = 32
# Derived channels the network computes from the raw 8 features; see `derive`.
DERIVED_CHANNELS = (
    "log1p_profit_usd",
    "log_profit_ratio_bps",
    "route_complexity",
    "log_gas_millions",
    "logit_confidence",
    "sin_time_of_day",
    "cos_time_of_day",
    "dex_count",
    "log_input_amount",
    "log_gap_minutes",
    "is_first",
)
N_DERIVED = len(DERIVED_CHANNELS)
_EPS = 1e-6
_CONF_EPS = 1e-4

# log(clamp(x[:, :, column] * scale + shift, low, high)) for six log transforms in
# one Log: log1p(profit), log(ratio), log(gas), log(conf), log(1 - conf), log(amount).
_LOG_COLUMNS = (0, 1, 3, 4, 4, 7)
_LOG_SCALE = (1.0, 1.0, 1.0, 1.0, -1.0, 1.0)
_LOG_SHIFT = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_LOG_LOW = (1.0, _EPS, _EPS, _CONF_EPS, _CONF_EPS, _EPS)
_LOG_HIGH = (float("inf"), float("inf"), float("inf"), 1.0 - _CONF_EPS, 1.0 - _CONF_EPS, float("inf"))
_N_BASE = 12  # 6 logs, route, dex, sin, cos, log gap, is_first


def _mixing_matrix() -> torch.Tensor:
    """[12, 11]: base columns -> DERIVED_CHANNELS (the logit is log(c) - log(1 - c))."""
    m = torch.zeros(_N_BASE, N_DERIVED)
    for base, channel, weight in (
        (0, 0, 1.0), (1, 1, 1e4), (6, 2, 1.0), (2, 3, 1.0), (3, 4, 1.0), (4, 4, -1.0),
        (8, 5, 1.0), (9, 6, 1.0), (7, 7, 1.0), (5, 8, 1.0), (10, 9, 1.0), (11, 10, 1.0),
    ):
        m[base, channel] = weight
    return m


def _base(x: torch.Tensor) -> torch.Tensor:
    """Raw [batch, seq, 8] -> [batch, seq, 12] with as few graph nodes as possible.

    Every node costs about a microsecond in ONNX Runtime whatever its size, so the
    transforms are grouped: one Log for all logs, one Sin for sin and cos, and
    the rest is a constant matrix (see derive and OpportunityLSTM._standardised).
    """
    low = x.new_tensor(_LOG_LOW)
    high = x.new_tensor(_LOG_HIGH)
    select = torch.zeros(x.shape[-1], len(_LOG_COLUMNS), dtype=x.dtype, device=x.device)
    for out, (column, scale) in enumerate(zip(_LOG_COLUMNS, _LOG_SCALE)):
        select[column, out] = scale
    logs = torch.log(torch.minimum(torch.maximum(x @ select + x.new_tensor(_LOG_SHIFT), low), high))
    tod = x[..., 5:6]
    circle = torch.sin(tod * (2.0 * torch.pi) + x.new_tensor((0.0, torch.pi / 2)))
    previous = torch.cat([tod[:, :1], tod[:, :-1]], dim=1)  # the first one is its own previous: gap 0
    gap = tod - previous
    gap = gap + (gap < 0).to(x.dtype)  # the stream crossed midnight
    is_first = torch.cat([torch.ones_like(tod[:, :1]), torch.zeros_like(tod[:, 1:])], dim=1)
    return torch.cat([logs, x[..., 2:3], x[..., 6:7], circle, torch.log1p(gap * 1440.0), is_first], dim=-1)


def derive(x: torch.Tensor) -> torch.Tensor:
    """Map raw features [batch, seq, 8] to model channels [batch, seq, 11].

    Heavy-tailed amounts go through logs, the confidence through a logit, the time
    of day onto the circle; the gap in minutes to the previous opportunity of the
    stream tells the network how busy the market is (0 and is_first=1 at the start).
    """
    return _base(x) @ _mixing_matrix().to(device=x.device, dtype=x.dtype)


class OpportunityLSTM(nn.Module):
    """Raw features [batch, seq, 8] -> calibrated success probability [batch, 1]."""

    # Buffers (register_buffer below), declared for the type checker.
    channel_mean: torch.Tensor
    channel_std: torch.Tensor
    mixing: torch.Tensor
    calibration_scale: torch.Tensor
    calibration_bias: torch.Tensor

    def __init__(self, hidden_size: int = HIDDEN_SIZE) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        # Standardisation statistics of the training data, kept with the weights so
        # that clients send raw values and ONNX and PyTorch compute the same graph.
        self.register_buffer("channel_mean", torch.zeros(N_DERIVED))
        self.register_buffer("channel_std", torch.ones(N_DERIVED))
        self.register_buffer("mixing", _mixing_matrix(), persistent=False)
        # Calibration (Platt scaling of the logit) fitted on the validation split,
        # index 0 for scores with history, 1 for a single vector: without history
        # the network cannot see the current regime and needs its own correction.
        self.register_buffer("calibration_scale", torch.ones(2))
        self.register_buffer("calibration_bias", torch.zeros(2))
        self.lstm = nn.LSTM(N_DERIVED, hidden_size, batch_first=True)
        # The head sees the LSTM summary and the current opportunity directly, so a
        # single vector (seq = 1) is scored as well as the network can.
        self.head = nn.Sequential(
            nn.Linear(hidden_size + N_DERIVED, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, 1),
        )

    def fit_normalisation(self, raw: torch.Tensor) -> None:
        """Set the standardisation buffers from raw training windows [batch, seq, 8]."""
        channels = derive(raw).reshape(-1, N_DERIVED)
        self.channel_mean.copy_(channels.mean(dim=0))
        self.channel_std.copy_(channels.std(dim=0).clamp(min=1e-3))

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits [batch, 1]; training optimises these."""
        return self._logits_and_single(raw)[0]

    def _logits_and_single(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = _base(raw)
        # is_first of the last step is 1 exactly when seq = 1: a tensor, not a
        # Python branch, so the exported graph keeps the sequence axis dynamic.
        single = base[:, -1, -1:]
        # derive() and standardisation folded into one affine map; the exporter
        # folds the buffer arithmetic into constants.
        weight = self.mixing / self.channel_std
        channels = base @ weight - self.channel_mean / self.channel_std
        sequence, _ = self.lstm(channels)
        summary = torch.cat([sequence[:, -1, :], channels[:, -1, :]], dim=-1)
        return self.head(summary), single

    def calibrated_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """The logit of the calibrated probability [batch, 1] (what an ensemble blends)."""
        logits, single = self._logits_and_single(raw)
        scale = self.calibration_scale[0] + (self.calibration_scale[1] - self.calibration_scale[0]) * single
        bias = self.calibration_bias[0] + (self.calibration_bias[1] - self.calibration_bias[0]) * single
        return logits * scale + bias

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.calibrated_logits(raw))


def load_state(source: str | Path | BinaryIO) -> OpportunityLSTM:
    """Build the network from a state dict saved by training (path or file object)."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    model = OpportunityLSTM(hidden_size=state["lstm.weight_hh_l0"].shape[1])
    model.load_state_dict(state)
    model.eval()
    return model

