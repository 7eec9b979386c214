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

Reads and writes on a connection time out after `IO_TIMEOUT_S`, so a client
that stalls mid-request cannot hold the worker until the arbiter kills it.
TLS is terminated in front (nginx): this worker serves plain HTTP.
"""
from __future__ import annotations

import errno
import gc
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import NoMoreData
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.base import Worker

from omni_mev.jsonio import dumps

# A request must arrive, and a response be taken, within this long once started.
IO_TIMEOUT_S = 5.0
# How long unread body bytes may take to drain before the connection is reused.
DRAIN_TIMEOUT_S = 1.0
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


def _snake(reason: str) -> str:
    return "_".join(reason.lower().replace("-", " ").split())


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error response (util.write_error) with the API's JSON body."""
    code = "internal_error" if status_int == 500 else _snake(reason)
    message = mesg or ("The service failed to answer; it is logged." if status_int == 500 else reason)
    body = dumps({"error": code, "message": message})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


_format_http_date = util.http_date
_date_cache: list[Any] = [None, ""]


def cached_http_date(timestamp: float | None = None) -> str:
    """util.http_date, formatted once a second for the Date header (it cost ~3% of a request)."""
    if timestamp is not None:
        return _format_http_date(timestamp)
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, _format_http_date(now)]
    return _date_cache[1]


def body_consumed(request: Any) -> bool:
    """Whether the application read the request body to its end, so there is nothing to drain."""
    body = request.body
    reader = getattr(body, "reader", None)
    return isinstance(reader, LengthReader) and reader.length == 0 and not body.buf.tell()


class OneSendResponse(wsgi.Response):
    """A response whose headers leave with the first body chunk (unless chunked)."""

    _pending: bytes | None = None

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._pending = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _flush_headers(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            util.write(self.sock, pending)

    def _emit_body(self, data: bytes) -> None:
        if self._pending is not None and not self.chunked:
            data, self._pending = self._pending + data, None
        else:
            self._flush_headers()
        util.write(self.sock, data, self.chunked)

    def sendfile(self, respiter: Any) -> bool:
        return False  # the body goes through write(), which carries the headers

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        self._flush_headers()
        super().close()


# forwarded_allow_ips verdicts by peer address: gunicorn parses the address
# and walks the allow list on every request (~3% of one); a worker's settings
# never change, and its peers are few (nginx, or a handful of clients).
_PEER_TRUST: dict[str, bool] = {}
_PEER_TRUST_LIMIT = 4096


class PeerTrustCachingRequest(Request):
    """gunicorn's request, remembering per peer address whether it may set forwarding headers."""

    def _peer_is_trusted_proxy(self) -> bool:
        peer = self.peer_addr
        if not isinstance(peer, tuple):
            return True  # a unix socket: gunicorn trusts it too
        trusted = _PEER_TRUST.get(peer[0])
        if trusted is None:
            if len(_PEER_TRUST) >= _PEER_TRUST_LIMIT:
                _PEER_TRUST.clear()
            trusted = _PEER_TRUST[peer[0]] = super()._peer_is_trusted_proxy()
        return trusted


class HttpParser(RequestParser):
    """gunicorn's HTTP/1.x parser, making PeerTrustCachingRequest messages."""

    mesg_class = PeerTrustCachingRequest


class Connection:
    """A client connection and its HTTP parser (which keeps bytes read ahead)."""

    __slots__ = ("sock", "addr", "server", "parser", "requests")

    def __init__(self, sock: socket.socket, addr: Any, server: Any, parser: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.server = server  # the listening address, for the WSGI environ
        self.parser = parser
        self.requests = 0

    def has_buffered_request(self) -> bool:
        """Whether the next request's bytes were already read (a pipelining client)."""
        return bool(self.parser.unreader.buf.getbuffer().nbytes)


class KeepAliveWorker(Worker):
    """The event-loop worker described in the module docstring."""

    def init_process(self) -> None:
        # Process-local: only this worker's responses, errors and dates change.
        wsgi.Response = OneSendResponse
        util.write_error = write_json_error
        util.http_date = cached_http_date
        self.selector = selectors.DefaultSelector()
        # Open connections waiting for a request, by when they started to wait, oldest first.
        self.idle: dict[Connection, float] = {}
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

    # The loop

    def run(self) -> None:
        # The application is loaded: its objects are long-lived, and need not be
        # scanned by every collection. A 1,024-item batch allocates ~2,000
        # containers, which at the default threshold (700) set off collections
        # costing ~15% of the request (docs/benchmarks.md).
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
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

    def _pass(self, timeout: float) -> None:
        """Serve what is ready, then accept at most one connection per listener."""
        # After serving, look without waiting: idle tasks run before the worker blocks.
        events = self.selector.select(0 if self._served_since_idle else timeout)
        listeners = []
        for key, _ in events:
            if key.data is _LISTENER:
                listeners.append(key.fileobj)
            elif key.data is _WAKE:
                self._drain_wake_pipe()
            else:
                self._serve(key.data)
                self._served_since_idle = True
        if self.alive:
            for listener in listeners:
                self._accept(listener)
        self._close_expired()
        if self._served_since_idle and (not events or time.monotonic() >= self._next_idle_run):
            self._run_idle_tasks()

    def _run_idle_tasks(self) -> None:
        self._served_since_idle = False
        self._next_idle_run = time.monotonic() + IDLE_TASK_INTERVAL_S
        for task in self._idle_tasks:
            try:
                task()
            except Exception:  # noqa: BLE001 - a task's failure must not take the worker down
                self.log.exception("idle task %r failed", task)

    def _notify_if_due(self) -> None:
        """Tell the arbiter this worker lives (a file-time system call), at most once a second."""
        now = time.monotonic()
        if now >= self._next_notify:
            self.notify()
            self._next_notify = now + min(NOTIFY_INTERVAL_S, self.timeout / 4)

    def _wait_s(self) -> float:
        if not self.idle:
            return 1.0
        oldest = next(iter(self.idle.values()))
        return max(0.0, min(1.0, oldest + self.cfg.keepalive - time.monotonic()))

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
        """Stop accepting; answer requests already sent on kept-alive connections, then close them."""
        for listener in self.sockets:
            self.selector.unregister(listener)
        deadline = time.monotonic() + min(STOP_LINGER_S, self.cfg.graceful_timeout)
        while self.idle and time.monotonic() < deadline:
            self._notify_if_due()
            self._pass(max(0.0, min(0.1, deadline - time.monotonic())))
        for connection in list(self.idle):
            self._close(connection)
        self._run_idle_tasks()

    # Connections

    def _accept(self, listener: socket.socket) -> None:
        if self.connections >= self.cfg.worker_connections:
            if not self.idle:
                return  # full: the connection waits in the backlog, or another worker takes it
            self._close(next(iter(self.idle)))
        try:
            client, addr = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return  # another worker took it
            raise
        client.setblocking(True)
        # Kernel timeouts: a blocking recv/send gives up after IO_TIMEOUT_S,
        # with no poll() per call as Python's own socket timeouts need.
        timeval = struct.pack("ll", int(IO_TIMEOUT_S), int(IO_TIMEOUT_S % 1 * 1e6))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        util.close_on_exec(client)
        connection = Connection(client, addr, self.server_names[listener], HttpParser(self.cfg, client, addr))
        self.selector.register(client, selectors.EVENT_READ, connection)
        self.connections += 1
        # Waiting for its first request, under the same timeout as between requests.
        self.idle[connection] = time.monotonic()

    def _close(self, connection: Connection) -> None:
        self.idle.pop(connection, None)
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        self.connections -= 1
        prompt_close(connection.sock)

    def _close_expired(self) -> None:
        expiry = time.monotonic() - self.cfg.keepalive
        while self.idle:
            connection, since = next(iter(self.idle.items()))
            if since > expiry:
                return
            self._close(connection)

    def _serve(self, connection: Connection) -> None:
        """Serve the request that arrived (and any pipelined behind it); keep or close the connection."""
        self.idle.pop(connection, None)
        keep = self._serve_one(connection)
        while keep and connection.has_buffered_request():
            keep = self._serve_one(connection)
        if keep:
            self.idle[connection] = time.monotonic()
        else:
            self._close(connection)

    def _serve_one(self, connection: Connection) -> bool:
        """One request; whether the connection may carry another."""
        request = None
        try:
            request = next(connection.parser)
            keep = self.handle_request(request, connection)
            return keep and (body_consumed(request)
                             or connection.parser.finish_body(deadline=time.monotonic() + DRAIN_TIMEOUT_S))
        except (StopIteration, NoMoreData):
            return False  # the client closed, or HTTP said this was the last request
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN, errno.ETIMEDOUT):
                self.log.exception("Socket error processing request.")
            return False
        except Exception as error:  # noqa: BLE001 - a malformed request: gunicorn answers it (in JSON)
            self.handle_error(request, connection.sock, connection.addr, error)
            return False

    def handle_request(self, request: Any, connection: Connection) -> bool:
        """Run the application for one parsed request; whether the connection stays open."""
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
            body = self.wsgi(environ, response.start_response)
            try:
                for chunk in body:
                    response.write(chunk)
                response.close()
            finally:
                self.log.access(response, request, environ, datetime.now() - started)
                if hasattr(body, "close"):
                    body.close()
            return not response.should_close()
        except Exception:
            if response is not None and response.headers_sent:
                # Half a response is on the wire: the connection cannot be reused.
                self.log.exception("Error handling request")
                return False
            raise
        finally:
            try:
                self.cfg.post_request(self, request, environ, response)
            except Exception:  # noqa: BLE001 - a hook must not take the worker down
                self.log.exception("Exception in post_request hook")

