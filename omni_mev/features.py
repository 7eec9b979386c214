"""The 8-feature contract shared by the simulator, the model and the API."""
from __future__ import annotations

from dataclasses import dataclass

FEATURE_NAMES: tuple[str, ...] = (
    "profit_usd",
    "profit_ratio",
    "route_complexity",
    "gas_millions",
    "confidence_score",
    "time_of_day",
    "dex_count",
    "input_amount_thousands",
)
N_FEATURES = len(FEATURE_NAMES)

# The model reads the current opportunity last, preceded by at most this many
# earlier opportunities of the same stream.
MAX_HISTORY = 31
MAX_SEQUENCE = MAX_HISTORY + 1


# The model computes in float32: a value beyond this is not a number it can read.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class FeatureBounds:
    """What the API accepts for one feature; `integer` marks counts.

    `maximum` None means no physical limit, but never beyond FLOAT32_MAX.
    """

    minimum: float
    maximum: float | None
    integer: bool = False
    description: str = ""

    @property
    def upper(self) -> float:
        """The largest value accepted."""
        return FLOAT32_MAX if self.maximum is None else self.maximum


# Physical bounds, deliberately wider than the typical ranges: a value above the
# usual range but physically possible (profit_usd 5000) is accepted and shows up
# in the drift counters rather than being rejected.
FEATURE_BOUNDS: dict[str, FeatureBounds] = {
    "profit_usd": FeatureBounds(0.0, None, description="expected profit after gas, USD"),
    "profit_ratio": FeatureBounds(0.0, None, description="route output / input amount"),
    "route_complexity": FeatureBounds(2, 6, integer=True, description="tokens in the route"),
    "gas_millions": FeatureBounds(0.0, None, description="gas estimate / 1e6"),
    "confidence_score": FeatureBounds(0.0, 1.0, description="scanner's base confidence"),
    "time_of_day": FeatureBounds(0.0, 1.0, description="UTC time of day, 0.5 = noon"),
    "dex_count": FeatureBounds(1, 4, integer=True, description="DEXes in the route"),
    "input_amount_thousands": FeatureBounds(
        0.0, None, description="input amount, thousands of USD"
    ),
}

EXAMPLE_FEATURES: tuple[float, ...] = (10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0)
