"""omni-mev's gunicorn worker: prefork, one thread, connections kept alive, errors in JSON.

gunicorn's sync worker opens and closes one TCP connection per request and
sends headers and body in two writes; a scoring request is short and
CPU-bound, so that overhead was a third of a /predict (docs/benchmarks.md).
`KeepAliveWorker` keeps gunicorn's process model, parser, WSGI environ and
hooks, and changes how connections are served:

- one thread runs an event loop over the listening sockets and this worker's
  connections, and serves each request to completion before the next: the
  model runs single-threaded per process, as in the sync worker;
- HTTP/1.1 connections stay open for `keepalive` seconds between requests
  (clients such as bots with a session, wrk, nginx with upstream keepalive);
  clients that close after each request (nginx's default) are served as before;
- a worker accepts one new connection per loop pass, so the connections a
  client opens at once spread over the workers instead of piling onto one,
  and closes a connection after KEEPALIVE_REQUESTS requests (as nginx does),
  so a client's reconnection lands on whichever worker is free: connections
  that piled onto one worker do not stay there;
- headers and a body of known length leave in one send();
- a connection is closed promptly, without lingering for the client's FIN;
- gunicorn's own error responses (a malformed request line, headers too large,
  a bad chunk) carry the API's JSON error body instead of an HTML page;
- the garbage collector leaves the loaded application alone and runs less
  often: the request path makes no reference cycles worth chasing at that rate.

A request is read without blocking: the loop gathers a connection's bytes
and hands the request to the application only once its head and body have
all arrived (omni_mev.http_framing), within the request read deadline
(AI_REQUEST_READ_TIMEOUT_S, 408 past it). A client that trickles bytes or
stalls mid-body therefore costs the worker nothing but a buffer, and never
delays its heartbeat or the requests of other connections. `Expect:
100-continue` is answered only for a body that will be accepted (413 first).
A kept-alive connection is never closed while it holds an unread request.
Responses are written with a send timeout (SEND_TIMEOUT_S).
TLS is terminated in front (nginx): this worker serves plain HTTP.
"""
from __future__ import annotations

import errno
import gc
import io
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from http import HTTPStatus

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.errors import NoMoreData
from gunicorn.http.message import Request
from gunicorn.workers.base import Worker

from omni_mev import gunicorn_internals, worker_boot
from omni_mev.api.errors import http_error, render, status_line
from omni_mev.api.table import error_shape_of
from omni_mev.config import Settings
from omni_mev.core.answers import Answer
from omni_mev.deferred import DeferredBody
from omni_mev.environ_keys import ARRIVED_AT, BODY, CLOSE_CONNECTION, PARKS
from omni_mev.errors import BadRequest, InternalError, OmniMevError, PayloadTooLarge, RequestTimeout
from omni_mev.http_framing import BodyTooLarge, ChunkedBody, MalformedBody, head_length

# A response must be taken by the client within this long per send.
SEND_TIMEOUT_S = 5.0
# Bytes read from a socket at once.
RECV_SIZE = 256 * 1024
# On shutdown, requests already in flight on kept-alive connections are still
# answered (with Connection: close) for this long.
STOP_LINGER_S = 1.0
# The arbiter kills a worker silent for `timeout` (30 s); one sign of life a
# second is plenty, and each costs a system call.
NOTIFY_INTERVAL_S = 1.0
# Idle tasks run whenever the worker has served requests and nothing else is
# ready, and at least this often while requests keep coming.
IDLE_TASK_INTERVAL_S = 0.05
# Requests served on one connection before it is closed (Connection: close).
KEEPALIVE_REQUESTS = 100
# On a reload, a stopping worker keeps accepting until its new siblings have loaded, at most this long.
HANDOVER_MAX_S = 10.0
# Allocations (less deallocations) of container objects between two collections
# of the youngest generation; Python's default is 700.
GC_THRESHOLD = 10_000
_LISTENER = object()
_WAKE = object()


def prompt_close(sock: socket.socket) -> None:
    """Send FIN, drop whatever request bytes already arrived, close; never wait for the client."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:  # BlockingIOError included: nothing (more) to drain
        pass
    finally:
        sock.close()


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error response (util.write_error), rendered by the API's error renderer.

    gunicorn calls it for a request it could not parse, so no route is known:
    the API's error shape. gunicorn keeps the phrase "Bad Request" for some
    other statuses (501 for an unknown transfer coding): those get their own
    phrase, and code. A 500 says nothing of its cause (gunicorn's message may
    be a traceback).
    """
    if reason == "Bad Request" and status_int != 400:
        reason = HTTPStatus(status_int).phrase
    write_error(sock, render(InternalError() if status_int == 500 else http_error(status_int, mesg, reason)))


def write_error(sock: socket.socket, answer: Answer) -> None:
    """An error response that closes the connection."""
    content = answer.encoded()
    head = "".join([f"HTTP/1.1 {status_line(answer.status)}\r\nConnection: close\r\n",
                    f"Content-Type: {answer.content_type}\r\n",
                    *(f"{name}: {value}\r\n" for name, value in (answer.headers or {}).items()),
                    f"Content-Length: {len(content)}\r\n\r\n"])
    util.write_nonblock(sock, head.encode("latin-1") + content)


class Connection:
    """A client connection, the bytes it sent that no request took yet, and the head being waited on."""

    __slots__ = ("sock", "addr", "server", "buffer", "head", "requests", "arrived_at")

    def __init__(self, sock: socket.socket, addr: Any, server: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.server = server  # the listening address, for the WSGI environ
        self.buffer = bytearray()
        self.head: PendingHead | None = None
        self.requests = 0
        self.arrived_at = 0.0  # when the first byte of the request in the buffer came (time.time())


class PendingHead:
    """A parsed request head whose body is still arriving: where the body ends, or the scan that finds it."""

    __slots__ = ("request", "length", "end", "chunked")

    def __init__(self, request: Request, length: int, end: int | None, chunked: ChunkedBody | None = None) -> None:
        self.request = request
        self.length = length  # of the head
        self.end = end  # None for a chunked body: `chunked` finds it
        self.chunked = chunked


class Parked:
    """A request whose response body waits on a dispatch: what finishing it needs."""

    __slots__ = ("request", "response", "environ", "body", "started")

    def __init__(self, request: Request, response: Any, environ: dict[str, Any], body: DeferredBody,
                 started: datetime) -> None:
        self.request = request
        self.response = response
        self.environ = environ
        self.body = body
        self.started = started


class KeepAliveWorker(Worker):
    """The event-loop worker described in the module docstring."""

    def init_process(self) -> None:
        # Process-local: only this worker's responses, errors and dates change.
        gunicorn_internals.install(write_json_error)
        self.selector = selectors.DefaultSelector()
        # Open connections waiting for a request, by when they started to wait, oldest first.
        self.idle: dict[Connection, float] = {}
        # Connections part-way through sending a request, by their read deadline, earliest first.
        self.reading: dict[Connection, float] = {}
        # Connections whose request's answer waits on a dispatch; not read meanwhile.
        self.parked: dict[Connection, Parked] = {}
        self.connections = 0
        self._next_notify = 0.0
        self._idle_tasks: list[Callable[[], None]] = []
        self._served_since_idle = False
        self._next_idle_run = 0.0
        super().init_process()

    def when_idle(self, task: Callable[[], None]) -> None:
        """Run `task` whenever requests were served and none is waiting, at least every 50 ms under load,
        and once more on the way out."""
        self._idle_tasks.append(task)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        if cfg.is_ssl:
            raise RuntimeError("omni_mev.workers.KeepAliveWorker serves plain HTTP; terminate TLS in nginx")

    def _limits(self) -> None:
        """The read deadline and body limit from the application's settings; the head limit from gunicorn's."""
        # Another WSGI application than omni-mev's gets omni-mev's defaults.
        settings = getattr(self.wsgi, "config", {}).get("SETTINGS") or Settings()
        self.read_timeout_s = settings.request_read_timeout_s
        self.max_body = settings.max_body_bytes
        # A head longer than gunicorn's limits allow is handed to its parser, which refuses it (414, 431).
        cfg = self.cfg
        self.head_limit = (cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2)
                           + 4) if cfg.limit_request_line > 0 and cfg.limit_request_field_size > 0 else 1 << 20

    # The loop

    def run(self) -> None:
        # The application is loaded: its objects are long-lived, and need not be
        # scanned by every collection. A 1,024-item batch allocates ~2,000
        # containers, which at the default threshold (700) set off collections
        # costing ~15% of the request (docs/benchmarks.md).
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        self._limits()
        self.server_names = {listener: listener.getsockname() for listener in self.sockets}
        for listener in self.sockets:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, _WAKE)
        while self.alive:
            self._notify_if_due()
            self._pass(self._wait_s())
            if not self.is_parent_alive():
                break
        self._stop()

    def _pass(self, timeout: float, accepting: bool = False) -> None:
        """Read what is ready and serve the requests it completes, then accept at most one connection per
        listener (while alive, or `accepting` through a reload's handover), then enforce the deadlines."""
        # After serving, look without waiting: idle tasks run before the worker blocks.
        events = self.selector.select(0 if self._served_since_idle else timeout)
        listeners = []
        for key, _ in events:
            if key.data is _LISTENER:
                listeners.append(key.fileobj)
            elif key.data is _WAKE:
                self._drain_wake_pipe()
            else:  # a connection: take its bytes and serve every request they complete
                self._read_pending(key.data)
        if self.parked:
            self._answer_parked()
        if self.alive or accepting:
            for listener in listeners:
                self._accept(listener)  # type: ignore[arg-type]  # the listening sockets registered in run()
        self._enforce_deadlines()
        if self._served_since_idle and (not events or time.monotonic() >= self._next_idle_run):
            self._run_idle_tasks()

    def _run_idle_tasks(self) -> None:
        self._served_since_idle = False
        self._next_idle_run = time.monotonic() + IDLE_TASK_INTERVAL_S
        for task in self._idle_tasks:
            try:
                task()
            except Exception:
                self.log.exception("idle task %r failed", task)

    def _notify_if_due(self) -> None:
        """Tell the arbiter this worker lives (a file-time system call), at most once a second."""
        now = time.monotonic()
        if now >= self._next_notify:
            self.notify()
            self._next_notify = now + min(NOTIFY_INTERVAL_S, self.timeout / 4)

    def _wait_s(self) -> float:
        """Until the next deadline: the oldest idle connection's expiry or the earliest read deadline."""
        now, wait = time.monotonic(), 1.0
        if self.idle:
            wait = min(wait, next(iter(self.idle.values())) + self.cfg.keepalive - now)
        if self.reading:
            wait = min(wait, next(iter(self.reading.values())) - now)
        for parked in self.parked.values():
            wait = min(wait, parked.body.deadline - now)
        return max(0.0, wait)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self.PIPE[0], 64):
                pass
        except OSError:
            pass

    def is_parent_alive(self) -> bool:
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return False
        return True

    def _stop(self) -> None:
        """Hand over, stop accepting; answer requests already sent on open connections, then close them.

        A reload starts the new workers as it stops the old ones: while a sibling is still loading its model
        (omni_mev.worker_boot), this worker goes on accepting and serving (each answer with Connection: close,
        so its clients reconnect to whichever worker is up), so no request waits in the listen backlog for a
        worker. A plain stop has no sibling loading, and stops at once.
        """
        handover_until = time.monotonic() + min(HANDOVER_MAX_S, self.cfg.graceful_timeout / 2)
        while worker_boot.siblings_loading(os.getpid()) and time.monotonic() < handover_until \
                and self.is_parent_alive():
            self._notify_if_due()
            self._pass(0.02, accepting=True)
        for listener in self.sockets:
            self.selector.unregister(listener)
        deadline = time.monotonic() + min(STOP_LINGER_S, self.cfg.graceful_timeout)
        while (self.idle or self.reading or self.parked) and time.monotonic() < deadline:
            self._notify_if_due()
            self._pass(max(0.0, min(0.1, deadline - time.monotonic())))
        self._answer_parked(force=True)  # what has not ended by now is reported queued
        for connection in [*self.idle, *self.reading]:
            self._close(connection)
        self._run_idle_tasks()

    # Connections

    def _accept(self, listener: socket.socket) -> None:
        if self.connections >= self.cfg.worker_connections:
            if not self.idle:
                return  # full: the connection waits in the backlog, or another worker takes it
            oldest = next(iter(self.idle))
            if self._read_pending(oldest):
                return  # it had a request after all: served, and no room was made
            self._close(oldest)
        try:
            client, addr = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return  # another worker took it
            raise
        client.setblocking(True)
        # Reads never block (MSG_DONTWAIT, after select). Writes do, and a kernel
        # timeout bounds each send without a poll() per call.
        timeval = struct.pack("ll", int(SEND_TIMEOUT_S), int(SEND_TIMEOUT_S % 1 * 1e6))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        util.close_on_exec(client)
        connection = Connection(client, addr, self.server_names[listener])
        self.selector.register(client, selectors.EVENT_READ, connection)
        self.connections += 1
        # Waiting for its first request, under the same timeout as between requests.
        self.idle[connection] = time.monotonic()

    def _close(self, connection: Connection) -> None:
        self.idle.pop(connection, None)
        self.reading.pop(connection, None)
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        self.connections -= 1
        prompt_close(connection.sock)

    def _enforce_deadlines(self) -> None:
        """408 for requests still incomplete at their read deadline; close connections idle past keepalive,
        unless a request arrived on them while the worker was busy."""
        now = time.monotonic()
        while self.reading:
            connection, deadline = next(iter(self.reading.items()))
            if deadline > now:
                break
            self._refuse(connection, RequestTimeout(f"The request did not arrive in full within "
                                                  f"{self.read_timeout_s:g} s (AI_REQUEST_READ_TIMEOUT_S)."))
        expiry = now - self.cfg.keepalive
        while self.idle:
            connection, since = next(iter(self.idle.items()))
            if since > expiry:
                return
            if not self._read_pending(connection):
                self._close(connection)

    def _read_pending(self, connection: Connection) -> bool:
        """Read what the connection has without waiting; whether there was anything (bytes or the close)."""
        try:
            data = connection.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._close(connection)
            return True
        self._received(connection, data)
        return True

    def _received(self, connection: Connection, data: bytes) -> None:
        if not data:  # the client closed (or half-closed) its side
            if connection.buffer:
                self._refuse(connection, BadRequest(self._short_message(connection)))
            else:
                self._close(connection)
            return
        if not connection.buffer:  # the first bytes of a request: its read deadline starts
            self.idle.pop(connection, None)
            self.reading[connection] = time.monotonic() + self.read_timeout_s
            connection.arrived_at = time.time()
        connection.buffer += data
        self._serve_complete(connection)

    def _short_message(self, connection: Connection) -> str:
        pending = connection.head
        if pending is None:
            return "The connection closed before the request head ended."
        if pending.end is None:
            return "The connection closed before the chunked body ended."
        got, declared = len(connection.buffer) - pending.length, pending.end - pending.length
        return f"The connection closed after {got} of the body's {declared} bytes (Content-Length)."

    def _refuse(self, connection: Connection, error: OmniMevError) -> None:
        """Answer a request the application never saw, in JSON, and close the connection. Once its head is parsed,
        the error takes the shape of the route it was for (the V2 protocol's on /v2)."""
        pending = connection.head
        shape = error_shape_of(self.wsgi, pending.request.path, pending.request.method) if pending else None
        try:
            write_error(connection.sock, render(error, shape) if shape else render(error))
        except OSError:
            pass
        self._close(connection)

    def _serve_complete(self, connection: Connection) -> None:
        """Serve each complete request in the buffer, in order; keep waiting for the rest."""
        while True:
            try:
                request = self._complete_request(connection)
            except OmniMevError as refusal:
                self._refuse(connection, refusal)
                return
            except Exception as error:  # noqa: BLE001 - a malformed head: gunicorn answers it (in JSON)
                self._served_since_idle = True
                self.handle_error(None, connection.sock, connection.addr, error)
                self._close(connection)
                return
            if request is None:
                return  # more bytes to come
            self.reading.pop(connection, None)
            self._served_since_idle = True
            keep = self._serve_one(connection, *request)
            if isinstance(keep, Parked):
                self._park(connection, keep)
                return
            if not keep:
                self._close(connection)
                return
            if connection.buffer:  # a pipelined request started arriving with this one
                self.reading[connection] = time.monotonic() + self.read_timeout_s
                connection.arrived_at = time.time()
            else:
                self.idle[connection] = time.monotonic()
                return

    def _complete_request(self, connection: Connection) -> tuple[Request, bytes] | None:
        """The next request, its head parsed and its body read (a chunked one decoded), once both are all in the
        buffer; None until then."""
        buffer = connection.buffer
        pending = connection.head
        if pending is None:
            length = head_length(buffer)
            if length is None:
                if len(buffer) <= self.head_limit:
                    return None
                length = len(buffer)  # past gunicorn's limits: its parser says which
            try:
                pending = connection.head = self._parse_head(connection, bytes(buffer[:length]), length)
            except NoMoreData:
                raise BadRequest(f"The request head is over {self.head_limit} bytes.") from None
        end = pending.end
        if end is None:
            assert pending.chunked is not None  # a head without a length has a chunked body
            try:
                end = pending.chunked.end(buffer)
            except BodyTooLarge:
                raise PayloadTooLarge(f"The chunked body is over {self.max_body} bytes, the most accepted "
                                   "(AI_MAX_BODY_BYTES).") from None
            except MalformedBody as error:  # answered once, then the connection is closed (_refuse)
                raise BadRequest(f"The chunked body is malformed: {error}. The connection is closed.") from None
            if end is None:
                return None
        elif len(buffer) < end:
            return None
        body = pending.chunked.content(buffer) if pending.chunked else bytes(buffer[pending.length:end])
        del buffer[:end]
        connection.head = None
        return pending.request, body

    def _parse_head(self, connection: Connection, head: bytes, length: int) -> PendingHead:
        """gunicorn's parse of the head (its errors propagate); the body's framing; 413 and 100-continue."""
        request = gunicorn_internals.parse_head(self.cfg, head, connection.addr, connection.requests + 1)
        declared = gunicorn_internals.declared_body_length(request)
        if declared is None:
            pending = PendingHead(request, length, None, ChunkedBody(length, self.max_body))
        else:
            pending = PendingHead(request, length, length + declared)
            if declared > self.max_body:
                connection.head = pending  # the 413 takes its route's error shape
                raise PayloadTooLarge(f"The body has {declared} bytes; at most {self.max_body} are accepted "
                                      "(AI_MAX_BODY_BYTES).")
        # 100 Continue only now that the body is known to be acceptable, and here: the body is read before
        # the application runs, so gunicorn must not send it again when it builds the environ.
        if gunicorn_internals.take_expect_continue(request):
            if pending.end is None or len(connection.buffer) < pending.end:
                util.write(connection.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        return pending

    def _serve_one(self, connection: Connection, request: Request, body: bytes) -> bool | Parked:
        """One complete request; whether the connection may carry another, or the request parked."""
        try:
            return self.handle_request(request, connection, body)
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN, errno.ETIMEDOUT):
                self.log.exception("Socket error processing request.")
            return False
        except Exception as error:  # noqa: BLE001 - a malformed body: gunicorn answers it (in JSON)
            self.handle_error(request, connection.sock, connection.addr, error)
            return False

    def handle_request(self, request: Any, connection: Connection, body: bytes) -> bool | Parked:
        """Run the application for one parsed request and its body, read once and handed on once (BODY, and
        `wsgi.input` for any other reader); whether the connection stays open, or the parked request when its
        answer waits on a dispatch (omni_mev.deferred)."""
        environ: dict[str, Any] = {}
        response = None
        try:
            self.cfg.pre_request(self, request)
            started = datetime.now()
            response, environ = wsgi.create(request, connection.sock, connection.addr, connection.server, self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            connection.requests += 1
            if not self.alive or connection.requests >= KEEPALIVE_REQUESTS:
                response.force_close()
            environ[PARKS] = True
            environ[ARRIVED_AT] = connection.arrived_at
            environ[BODY] = body
            environ["wsgi.input"] = io.BytesIO(body)
            answer = self.wsgi(environ, response.start_response)
            if environ.get(CLOSE_CONNECTION):  # the body was badly framed: nothing after it is a request
                response.force_close()
        except Exception:
            self._after_request(request, environ, response)
            raise
        if isinstance(answer, DeferredBody) and not answer.ready():
            return Parked(request, response, environ, answer, started)
        return self._respond(request, response, environ, answer, started)

    def _respond(self, request: Any, response: Any, environ: dict[str, Any], body: Any, started: datetime) -> bool:
        """Write the application's response; whether the connection stays open."""
        try:
            self._write(request, response, environ, body, started)
            return not response.should_close() and not request.should_close()
        except Exception:
            if response.headers_sent:
                # Half a response is on the wire: the connection cannot be reused.
                self.log.exception("Error handling request")
                return False
            raise
        finally:
            self._after_request(request, environ, response)

    def _write(self, request: Any, response: Any, environ: dict[str, Any], body: Any, started: datetime) -> None:
        if isinstance(body, DeferredBody):  # rendered, and the response started with its final status, only now
            body = [body.content()]
        try:
            for chunk in body:
                response.write(chunk)
            response.close()
        finally:
            self.log.access(response, request, environ, datetime.now() - started)
            if hasattr(body, "close"):
                body.close()

    def _after_request(self, request: Any, environ: dict[str, Any], response: Any) -> None:
        try:
            self.cfg.post_request(self, request, environ, response)
        except Exception:
            self.log.exception("Exception in post_request hook")

    # Requests whose answer waits on a dispatch

    def _park(self, connection: Connection, parked: Parked) -> None:
        """Stop reading the connection (its next request waits for this answer) until the body is ready."""
        self.selector.unregister(connection.sock)
        self.parked[connection] = parked
        parked.body.when_done(self._wake)

    def _wake(self) -> None:
        """From a sender thread: a parked answer may be ready."""
        try:
            os.write(self.PIPE[1], b".")
        except OSError:
            pass

    def _answer_parked(self, force: bool = False) -> None:
        """Write the parked answers that are ready (all of them with `force`), then serve their connections on."""
        for connection, parked in list(self.parked.items()):
            if not (force or parked.body.ready()):
                continue
            del self.parked[connection]
            try:
                keep = self._respond(parked.request, parked.response, parked.environ, parked.body, parked.started)
            except OSError:
                keep = False
            except Exception:
                self.log.exception("Error writing a deferred response")
                keep = False
            self.selector.register(connection.sock, selectors.EVENT_READ, connection)
            if not keep:
                self._close(connection)
            elif connection.buffer:
                self.reading[connection] = time.monotonic() + self.read_timeout_s
                self._serve_complete(connection)
            else:
                self.idle[connection] = time.monotonic()
