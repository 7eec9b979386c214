"""Append-only JSON-lines decision log, shared by every worker of a host: the audit trail of every decision acted on.

Each record is one line written with one write() under an exclusive flock,
so lines from different workers never interleave or tear. The log is written,
never read, by the service: what a worker needs to know about dispatches
(ids already used, intents still open) is in the outbox's table
(omni_mev.trading.intent_store), so a log of any size costs a start or a
reload nothing.

Rotation: past `max_bytes` the worker holding the lock renames the file to
`<name>.1` (shifting older ones up to `<name>.<backups>`) and starts a new
one. A worker that finds the path pointing at another file than the one it
has open (this rotation, or logrotate's rename with `create`) reopens it
before it writes, so no line goes to a file that was rotated away.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)
DISPATCH_EVENT = "dispatch"
OUTCOME_EVENT = "outcome"
PAPER_EVENT = "paper"
REFUSED_EVENT = "refused"
RESEND_EVENT = "resend"
RECONCILED_EVENT = "reconciled"
STALE_EVENT = "stale"
PAPER_FLUSH_S = 1.0
PAPER_BUFFER_LIMIT = 512


def encode(record: dict[str, Any]) -> bytes:
    """One record as one line."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


class DecisionLog:
    """The log file, its cross-process lock, its rotation, and the buffer of records that move no money."""

    def __init__(self, path: Path, max_bytes: int = 0, backups: int = 10) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._lock = threading.Lock()  # threads of this process; flock covers processes
        self._paper: list[bytes] = []
        self._paper_lock = threading.Lock()  # request thread vs flusher; never held during I/O
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)

    def _names(self, fd: int) -> bool:
        """Whether the path still names the file open on `fd`."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _current(self) -> int:
        """The descriptor of the file the path names now: reopened after a rotation by anyone."""
        if self._fd is not None:
            if self._names(self._fd):
                return self._fd
            os.close(self._fd)
        self._fd = self._open()
        return self._fd

    def append(self, records: list[dict[str, Any]]) -> None:
        """Records in one write(), now; OSError when the file cannot be written."""
        if records:
            self._write(b"".join(map(encode, records)))

    def _write(self, data: bytes) -> None:
        with self._lock:
            # The lock is taken on the file the path names, then checked again: a rotation in between would
            # otherwise leave this write on the renamed file.
            while True:
                fd = self._current()
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self._names(fd):
                    break
                fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # close a line a crash left unterminated
                written = os.write(fd, data)
                if written != len(data):  # a full disk: never leave half a line behind
                    raise OSError(f"short write to {self.path}")
                if self.max_bytes and size + written > self.max_bytes:
                    self._rotate()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        """Rename the file to .1 (older ones shift up, the oldest beyond `backups` goes), under the lock."""
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.unlink(self.path)
        log.info("decision log %s rotated (over %d bytes)", self.path, self.max_bytes)

    def append_paper(self, record: dict[str, Any]) -> None:
        """Queue a record that moves no money (paper trades, refusals); a background thread writes them."""
        line = encode(record)
        with self._paper_lock:
            self._paper.append(line)
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="decision-log-flusher", daemon=True)
            self._flusher.start()
            atexit.register(self.flush)
        if len(self._paper) >= PAPER_BUFFER_LIMIT:
            self._wake.set()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(PAPER_FLUSH_S)
            self._wake.clear()
            try:
                self.flush()
            except OSError as error:
                log.error("decision log %s: cannot write paper records: %s", self.path, error)

    def flush(self) -> None:
        """Write the queued paper records in one write() (no fsync: paper trades only)."""
        with self._paper_lock:
            batch, self._paper = self._paper, []
        if batch:
            self._write(b"".join(batch))
