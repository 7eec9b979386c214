"""The decision threshold in force: AI_THRESHOLD when set, else the served model's own, else 0.78.

The threshold is part of a model: `omni-mev train` chooses it from the data
(omni_mev.training.thresholds) and writes it on the card as
`thresholds.decision`; a promotion brings the challenger's with it. The
shipped model's card keeps 0.78, the documented default of AI_THRESHOLD.
"""
from __future__ import annotations

from typing import Any

DEFAULT_THRESHOLD = 0.78
FROM_SETTING, FROM_CARD, FROM_DEFAULT = "AI_THRESHOLD", "model card", "default"


def card_threshold(card: dict[str, Any] | None) -> float | None:
    """The decision threshold a model's card gives, if any."""
    value = ((card or {}).get("thresholds") or {}).get("decision")
    return float(value) if isinstance(value, (int, float)) and 0.0 <= value <= 1.0 else None


def threshold_in_force(setting: float | None, card: dict[str, Any] | None) -> tuple[float, str]:
    """(threshold, where it comes from): the setting, else the card's, else DEFAULT_THRESHOLD."""
    if setting is not None:
        return setting, FROM_SETTING
    from_card = card_threshold(card)
    if from_card is not None:
        return from_card, FROM_CARD
    return DEFAULT_THRESHOLD, FROM_DEFAULT
