"""`omni-mev stream`: the stream server's process: settings, its own predictor, the WebSocket server, a drain on
SIGTERM.

Run it beside the HTTP service (systemd/omni-mev-stream.service): it reads
the same settings, so it serves the same model, threshold and mode, writes
the same ledger and dispatches through the same outbox.
"""
from __future__ import annotations

import asyncio
import logging

from omni_mev.auth import ApiKeys, load_keys
from omni_mev.service import build_service, settings_from
from omni_mev.stream import kserve
from omni_mev.stream.websocket import StreamServer, install_signal_handlers

log = logging.getLogger(__name__)
# On SIGTERM, how long connections may take to finish the message in hand.
DRAIN_S = 5.0


async def serve_until_stopped() -> None:
    settings = settings_from()
    service = build_service(settings)
    keys = ApiKeys(load_keys(settings))
    websocket = StreamServer(service.predictor, keys)
    await websocket.start()
    grpc_server = await kserve.start(service.predictor, keys, settings.stream_host, settings.grpc_port)
    stop = asyncio.Event()
    install_signal_handlers(stop.set)
    status = service.predictor.status()
    log.info("omni-mev stream: ws://%s:%d/stream, gRPC %s:%d, %s mode, model %s %s, API key auth %s",
             settings.stream_host, settings.stream_port, settings.stream_host, settings.grpc_port, settings.mode,
             status.kind, status.version, "on" if keys.enabled else "OFF")
    await stop.wait()
    log.info("omni-mev stream: draining")
    await websocket.drain(DRAIN_S)
    await grpc_server.stop(DRAIN_S)
    log.info("omni-mev stream: stopped")


def main() -> int:
    asyncio.run(serve_until_stopped())
    return 0
