"""gunicorn's sync worker, closing each connection as soon as the response is out."""
from __future__ import annotations

import socket

from gunicorn import util
from gunicorn.workers.sync import SyncWorker


def prompt_close(sock: socket.socket, *args, **kwargs) -> None:
    """Send FIN, drop whatever request bytes already arrived, close; never wait.

    gunicorn >= 25 closes with util.close_graceful, which lingers (up to 2 s)
    until the client closes its side. A sync worker serves one connection at a
    time, so that wait is a round trip to the client, per request, during which
    the worker does nothing; with a slow or busy client it is much worse. The
    linger guards against a reset when a client pipelines more requests; the
    clients here do not (nginx never pipelines to upstreams), and the response
    has been sent in full before the FIN either way.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:  # BlockingIOError included: nothing (more) to drain
        pass
    finally:
        sock.close()


class PromptCloseSyncWorker(SyncWorker):
    """SyncWorker with prompt_close instead of the lingering close."""

    def init_process(self) -> None:
        # Only this worker process is affected; the master serves no requests.
        util.close_graceful = prompt_close
        super().init_process()
