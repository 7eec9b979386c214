"""The WebSocket protocol of the stream server: handshake, framing, per-connection bounds, close codes.

- Path `/stream`. With API keys configured, the handshake must carry one
  (`Authorization: Bearer` or `X-API-Key`): 401 before the upgrade otherwise.
  `/metrics`, on the same port as the clients, needs one too (Prometheus
  sends it as its scrape's `authorization`).
  `GET /health` answers 200 (503 without a model) without an upgrade; every
  other refused handshake (no upgrade asked: 426, another path: 404) is
  answered in the API's JSON too.
- One JSON text message per opportunity, or several under `items`; each
  answer echoes the message's `id` and carries what /predict (or
  /predict/batch) answers. Answers leave in the order the messages came.
- An error answers its message ({"id", "error", "message"[, "fields"]}) and
  never closes the connection: malformed JSON, a binary frame, a schema
  violation.
- Bounds: a message over AI_STREAM_MAX_MESSAGE_BYTES closes the connection
  (1009). At most AI_STREAM_QUEUE messages wait per connection: beyond, the
  server stops reading it, and TCP pushes back on the client (backpressure,
  never an overload error). A client that does not take an answer within
  AI_STREAM_SEND_TIMEOUT_S is dropped: its connection is aborted, since a
  close frame could not reach it either (it sees 1006).
- Pings every AI_STREAM_PING_INTERVAL_S; no pong within as long closes
  (1011). On shutdown each connection finishes the message in hand, then is
  closed with 1001; messages not yet started get no answer (send them again).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from omni_mev import metrics
from omni_mev.core import accounting
from omni_mev.core.answers import Later
from omni_mev.core.health import health_body
from omni_mev.core.keys import ApiKeys
from omni_mev.errors import OmniMevError, error_code
from omni_mev.jsonio import dumps
from omni_mev.predictor import Predictor
from omni_mev.stream import scoring
from omni_mev.stream.reload import Serving

log = logging.getLogger(__name__)
PATH = "/stream"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
# The request metrics' endpoint label of a WebSocket message.
ENDPOINT = "ws:/stream"
SHUTDOWN = (CloseCode.GOING_AWAY, "the server is shutting down; reconnect")
# How long a connection may take to answer a close before it is dropped.
CLOSE_TIMEOUT_S = 2.0


class StreamServer:
    """The WebSocket side of `omni-mev stream`: serves connections until `drain()`."""

    def __init__(self, serving: Serving, api_keys: ApiKeys) -> None:
        self.serving = serving
        self.settings = serving.predictor.settings
        self.api_keys = api_keys
        self.draining = False
        self.open: set[ServerConnection] = set()
        # Connections in the middle of a message: a drain waits for them.
        self.busy: set[ServerConnection] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.server: Server | None = None

    async def start(self) -> Server:
        settings = self.settings
        self.server = await serve(
            self.handle, settings.stream_host, settings.stream_port,
            process_request=self.process_request, process_response=_json_refusal, compression=None,
            max_size=settings.stream_max_message_bytes, max_queue=settings.stream_queue,
            ping_interval=settings.stream_ping_interval_s, ping_timeout=settings.stream_ping_interval_s,
            close_timeout=CLOSE_TIMEOUT_S,
            # Several stream processes (AI_STREAM_PROCESSES) share the port; the kernel spreads the connections.
            reuse_port=settings.stream_processes > 1,
        )
        return self.server

    @property
    def predictor(self) -> Predictor:
        """The predictor serving now (a promotion swaps it between two messages)."""
        return self.serving.predictor

    # The handshake

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Health checks and metrics without an upgrade; 404 for other paths; 401 without a valid key (on the
        upgrade, and on /metrics, which shares the clients' port); else the upgrade."""
        path = request.path.split("?", 1)[0]
        if path == METRICS_PATH:
            refused = self._unauthorised(request)
            if refused is not None:
                return refused
            body, content_type = metrics.exposition()
            return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase,
                            Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))]), body)
        if path == HEALTH_PATH:
            try:
                return _json_response(HTTPStatus.OK, health_body(self.predictor.status()))
            except OmniMevError as unavailable:
                return _json_response(HTTPStatus(unavailable.status), unavailable.to_dict())
        if path != PATH:
            return _json_response(HTTPStatus.NOT_FOUND,
                                  {"error": "not_found", "message": f"The WebSocket endpoint is {PATH}."})
        if self.draining:
            return _json_response(HTTPStatus.SERVICE_UNAVAILABLE,
                                  {"error": "shutting_down", "message": "The server is shutting down; reconnect."})
        return self._unauthorised(request)

    def _unauthorised(self, request: Request) -> Response | None:
        """401 in the API's JSON unless the request carries a valid key (or no keys are configured)."""
        try:
            self.api_keys.check(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
        except OmniMevError as refused:
            response = _json_response(HTTPStatus.UNAUTHORIZED, refused.to_dict())
            response.headers.update(refused.headers)
            return response
        return None

    # Messages

    async def handle(self, connection: ServerConnection) -> None:
        """Answer each message in order until the client leaves, a bound is crossed or the server drains."""
        self.open.add(connection)
        try:
            async for raw in connection:
                self.busy.add(connection)
                self._idle.clear()
                try:
                    answer = await self._answer(raw)
                    # Returns at once unless the connection's write buffer is full (the client is not reading).
                    async with asyncio.timeout(self.settings.stream_send_timeout_s):
                        await connection.send(answer, text=True)
                except TimeoutError:
                    log.warning("closing %s: an answer was not taken within %g s (AI_STREAM_SEND_TIMEOUT_S)",
                                connection.remote_address, self.settings.stream_send_timeout_s)
                    connection.transport.abort()
                    return
                finally:
                    self.busy.discard(connection)
                    if not self.busy:
                        self._idle.set()
                if self.draining:
                    await connection.close(*SHUTDOWN)
                    return
        except ConnectionClosed:
            return
        finally:
            self.open.discard(connection)

    async def _answer(self, raw: str | bytes) -> bytes:
        """The answer to one message, as the UTF-8 of a text frame."""
        started = time.perf_counter()
        ident: Any = None
        status = 200
        try:
            message = scoring.parse(raw)
            assert isinstance(raw, str)  # parse() refuses binary frames
            ident = scoring.message_id(message)
            scored = scoring.score(self.predictor, message, raw)
            answer = scoring.with_id(await scored.settled() if isinstance(scored, Later) else scored, ident)
        except Exception as error:  # noqa: BLE001 - every error answers its message; a bug is logged
            status, answer = scoring.error_answer(error, ident)
        accounting.count(ENDPOINT, status, started)
        return dumps(answer)

    # Shutdown

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting; let each connection finish the message in hand (up to `timeout_s`); close the rest with
        1001."""
        self.draining = True
        if self.server is None:
            return
        self.server.close(close_connections=False)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d connection(s) still busy after %g s; closing them", len(self.busy), timeout_s)
        await asyncio.gather(*(connection.close(*SHUTDOWN) for connection in list(self.open)),
                             return_exceptions=True)
        await self.server.wait_closed()


def _json_refusal(connection: ServerConnection, request: Request, response: Response) -> Response:
    """A failed handshake (no upgrade asked, a bad version or key) answered in the API's JSON, not websockets'
    text; the upgrade and the metrics pass as they are."""
    if response.status_code < HTTPStatus.BAD_REQUEST or response.headers.get("Content-Type", "").startswith(
            "application/json"):
        return response
    status = HTTPStatus(response.status_code)
    reason = response.body.decode(errors="replace").split("\n", 1)[0].strip()
    refusal = _json_response(status, {"error": error_code(status.phrase),
                                      "message": f"{reason} Open a WebSocket connection to {PATH}."})
    if "Upgrade" in response.headers:
        refusal.headers["Upgrade"] = response.headers["Upgrade"]
    return refusal


def _json_response(status: HTTPStatus, body: dict[str, Any]) -> Response:
    """An HTTP answer instead of the upgrade, in the API's JSON."""
    encoded = dumps(body)
    return Response(status.value, status.phrase, Headers([("Content-Type", "application/json"),
                                                           ("Content-Length", str(len(encoded))),
                                                           ("Connection", "close")]), encoded)


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT stop the server gracefully."""
    import signal

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
