"""The stream server follows the model registry: a promotion or a rollback swaps its predictor between two messages.

The gunicorn master reloads its workers when an alias changes (gunicorn.conf.py);
the stream server is one long-lived process, so it loads the new champion
beside the old one, off the event loop, and swaps them when it is ready. A
message is scored wholly by one predictor; a champion that fails to load
leaves the old one serving, logged.
"""
from __future__ import annotations

import asyncio
import logging

from omni_mev.predictor import Predictor
from omni_mev.registry.store import Registry
from omni_mev.registry.watcher import AliasWatcher
from omni_mev.service import Service, settings_from, with_new_models

log = logging.getLogger(__name__)


class Serving:
    """What the stream server serves now; its protocols read `predictor` for each message."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._reloading = asyncio.Lock()

    @property
    def predictor(self) -> Predictor:
        return self.service.predictor

    async def reload(self) -> None:
        """Load the registry's champion and challenger now, then swap; one reload at a time."""
        async with self._reloading:
            loop = asyncio.get_running_loop()
            try:
                service = await loop.run_in_executor(None, lambda: with_new_models(self.service, settings_from()))
            except Exception as error:  # noqa: BLE001 - the old champion keeps serving
                log.error("registry: the new champion could not be loaded (%s); still serving %s", error,
                          self.predictor.status().version)
                return
            self.service = service
            log.info("registry: now serving %s", service.predictor.status().version)

    def follow_registry(self) -> AliasWatcher | None:
        """Reload whenever the registry's aliases change (AI_MODEL_REGISTRY); None without a registry."""
        if self.service.settings.model_registry is None:
            return None
        loop = asyncio.get_running_loop()
        def on_change() -> None:  # from the watcher's thread: the reload runs on the event loop
            asyncio.run_coroutine_threadsafe(self.reload(), loop)

        watcher = AliasWatcher(Registry.of(self.service.settings), on_change=on_change)
        watcher.start()
        return watcher
