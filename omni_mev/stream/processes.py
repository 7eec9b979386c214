"""`omni-mev stream` as one process or several (AI_STREAM_PROCESSES) that share its ports through SO_REUSEPORT.

One stream process runs its event loop on one core: at 8 connections, two
processes on a 2-core machine answered 1.5x the messages of one
(docs/streaming.md). A connection stays with the process that accepted it,
so a single connection gains nothing.

The processes write their metrics to one private multiprocess directory, so
`/metrics` on the shared port reads the same totals whichever process answers
the scrape. It is never the HTTP service's directory, which gunicorn's master
empties at each start.

This module imports no model code: the processes are spawned, not forked,
and each loads its own model session.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
from multiprocessing.synchronize import Event
from types import FrameType

from omni_mev.config import load_settings

log = logging.getLogger(__name__)
# omni_mev.metrics.MULTIPROC_VARIABLE, spelt out: importing omni_mev.metrics would import prometheus_client
# before the variable is set, and it reads the variable once, on import.
METRICS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def main() -> int:
    """Serve until SIGTERM or SIGINT, in AI_STREAM_PROCESSES processes."""
    count = load_settings().stream_processes
    metrics_dir = tempfile.mkdtemp(prefix="omni-mev-stream-metrics-")
    # Read by prometheus_client when first imported: by this process's server, or by each spawned one.
    os.environ[METRICS_VARIABLE] = metrics_dir
    try:
        if count == 1:
            from omni_mev.stream.server import serve

            serve()
            return 0
        return _supervise(count, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_one(ready: Event) -> None:
    """In a spawned process: log as the command does, and serve; `ready` is set once it listens."""
    from omni_mev.logs import configure_logging
    from omni_mev.stream.server import serve

    configure_logging()
    serve(on_ready=ready.set)


def _supervise(count: int, metrics_dir: str) -> int:
    """Start `count` processes; restart one that dies after it served; forward SIGTERM/SIGINT to all, and wait
    for their drain.

    A process that ends before it listened cannot serve (a port taken, a
    model missing): restarting it would only loop, so the stream server stops
    with its exit code.
    """
    context = multiprocessing.get_context("spawn")
    children: dict[int, tuple[multiprocessing.process.BaseProcess, Event]] = {}
    stopping = False

    def start() -> None:
        ready = context.Event()
        child = context.Process(target=_serve_one, args=(ready,), name="omni-mev-stream")
        child.start()
        children[child.sentinel] = (child, ready)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child, _ in children.values():
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(count):
        start()
    log.info("omni-mev stream: %d processes sharing the ports", count)
    exit_code = 0
    while children:
        for sentinel in multiprocessing.connection.wait(list(children)):
            child, ready = children.pop(sentinel)  # type: ignore[arg-type]  # wait() returns the sentinels given
            child.join()
            _forget_gauges(child.pid, metrics_dir)
            if stopping:
                continue
            if not ready.is_set():
                log.error("omni-mev stream: process %d failed to start (exit %s); stopping", child.pid,
                          child.exitcode)
                exit_code = child.exitcode or 1
                stop(signal.SIGTERM, None)
                continue
            log.error("omni-mev stream: process %d ended (exit %s); starting another", child.pid, child.exitcode)
            start()
    return exit_code


def _forget_gauges(pid: int | None, metrics_dir: str) -> None:
    """A dead process's live gauges leave the aggregate (its counters stay counted)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)
