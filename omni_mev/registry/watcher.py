"""In the gunicorn master: reload the workers when the registry's aliases change."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from omni_mev.registry.store import ALIASES, Registry

log = logging.getLogger(__name__)


def alias_targets(registry: Registry) -> tuple[str | None, ...]:
    """What the aliases point to now (what the watcher compares)."""
    return tuple(registry.alias(name) for name in ALIASES)


class AliasWatcher(threading.Thread):
    """In the gunicorn master: when an alias changes, reload (HUP), so workers serve the new champion.

    `omni-mev promote` and `rollback` need no process id, signal or privilege:
    a change in the registry is enough, whoever makes it.
    """

    def __init__(self, root: Path, on_change: Callable[[], None], interval_s: float = 1.0) -> None:
        super().__init__(name="omni-mev-registry-watcher", daemon=True)
        self.registry = Registry(root)
        self.on_change = on_change
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self.seen = alias_targets(self.registry)

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            current = alias_targets(self.registry)
            if current != self.seen:
                log.info("registry %s: aliases changed %s -> %s; reloading the workers", self.registry.root,
                         self.seen, current)
                self.seen = current
                self.on_change()

    def stop(self) -> None:
        self._stopping.set()
