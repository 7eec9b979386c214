"""How omni-mev's commands log: warnings from libraries, information from omni-mev, on stderr."""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    logging.getLogger("omni_mev").setLevel(logging.INFO)
