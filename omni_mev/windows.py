"""Time windows written as N followed by m, h or d ('15m', '24h', '7d'): /quality, the gate and retraining."""
from __future__ import annotations

import re

MAX_WINDOW_S = 90 * 86_400.0
_WINDOW = re.compile(r"^(\d{1,4})([mhd])$")
_UNIT_S = {"m": 60.0, "h": 3_600.0, "d": 86_400.0}
ALLOWED = "N followed by m, h or d (1h, 24h, 7d), up to 90d"


def window_length(text: str) -> float:
    """The seconds of a window already validated (a setting); ValueError for one that is not a window."""
    seconds = parse_window(text)
    if seconds is None:
        raise ValueError(f"{text!r} is not a window")
    return seconds


def parse_window(text: str) -> float | None:
    """The window in seconds, or None when `text` is not one."""
    found = _WINDOW.match(text.strip())
    seconds = int(found.group(1)) * _UNIT_S[found.group(2)] if found else 0.0
    return seconds if 0 < seconds <= MAX_WINDOW_S else None
