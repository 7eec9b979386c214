"""Reload what serves when the registry's aliases change: the gunicorn master's workers, the stream server's
predictor."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from omni_mev.registry.store import ALIASES, Registry

log = logging.getLogger(__name__)


def alias_targets(registry: Registry) -> tuple[str | None, ...]:
    """What the aliases point to now (what the watcher compares)."""
    return tuple(registry.alias(name) for name in ALIASES)


class AliasWatcher(threading.Thread):
    """When an alias changes, call `on_change`: the gunicorn master reloads its workers (HUP), the stream server
    swaps its predictor, so both serve the new champion.

    `omni-mev promote` and `rollback` need no process id, signal or privilege:
    a change in the registry is enough, whoever makes it.
    """

    def __init__(self, registry: Registry, on_change: Callable[[], None], interval_s: float = 1.0) -> None:
        super().__init__(name="omni-mev-registry-watcher", daemon=True)
        self.registry = registry
        self.on_change = on_change
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self.seen = alias_targets(self.registry)

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                current = alias_targets(self.registry)
            except Exception as error:  # noqa: BLE001 - a shared database down: keep serving, keep watching
                log.warning("registry %s: aliases unreadable (%s); still serving %s", self.registry.root, error,
                            self.seen)
                continue
            if current != self.seen:
                log.info("registry %s: aliases changed %s -> %s; reloading", self.registry.root,
                         self.seen, current)
                self.seen = current
                self.on_change()

    def stop(self) -> None:
        self._stopping.set()
