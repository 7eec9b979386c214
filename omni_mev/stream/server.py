"""`omni-mev stream`: the stream server's process: settings, its own predictor, the WebSocket server, a drain on
SIGTERM.

Run it beside the HTTP service (systemd/omni-mev-stream.service): it reads
the same settings, so it serves the same model, threshold and mode, writes
the same ledger, dispatches through the same outbox and follows the same
registry (omni_mev.stream.reload). Its metrics are its own, on its port's
/metrics: Prometheus scrapes it beside the HTTP service's master. One or
several such processes run (omni_mev.stream.processes).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from omni_mev import metrics
from omni_mev.core.keys import ApiKeys, load_keys
from omni_mev.service import build_service, settings_from
from omni_mev.stream import kserve
from omni_mev.stream.reload import Serving
from omni_mev.stream.websocket import StreamServer, install_signal_handlers

log = logging.getLogger(__name__)
# On SIGTERM, how long connections may take to finish the messages in hand (both protocols, at once).
DRAIN_S = 5.0
METRICS_FLUSH_S = 1.0


async def serve_until_stopped(on_ready: Callable[[], None] | None = None) -> None:
    settings = settings_from()
    # Metric writes are kept in memory and written to the multiprocess files once a second, off the messages' path.
    metrics.buffer_writes()
    flusher = asyncio.create_task(_flush_metrics_every(METRICS_FLUSH_S))
    serving = Serving(build_service(settings))
    keys = ApiKeys(load_keys(settings))
    websocket = StreamServer(serving, keys)
    await websocket.start()
    grpc_server = await kserve.start(serving, keys, settings.stream_host, settings.grpc_port)
    watcher = serving.follow_registry()
    stop = asyncio.Event()
    install_signal_handlers(stop.set)
    if on_ready is not None:
        on_ready()
    status = serving.predictor.status()
    log.info("omni-mev stream: ws://%s:%d/stream, gRPC %s:%d, %s mode, model %s %s, API key auth %s",
             settings.stream_host, settings.stream_port, settings.stream_host, settings.grpc_port, settings.mode,
             status.kind, status.version, "on" if keys.enabled else "OFF")
    await stop.wait()
    log.info("omni-mev stream: draining")
    if watcher is not None:
        watcher.stop()
    # Both protocols at once: each answers the messages in hand, then closes (1001; UNAVAILABLE), within DRAIN_S.
    await asyncio.gather(websocket.drain(DRAIN_S), grpc_server.drain(DRAIN_S))
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    metrics.flush()
    log.info("omni-mev stream: stopped")


async def _flush_metrics_every(interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        metrics.flush()


def serve(on_ready: Callable[[], None] | None = None) -> None:
    """This process's stream server, until SIGTERM or SIGINT; `on_ready` is called once it listens."""
    asyncio.run(serve_until_stopped(on_ready))
