"""Append-only JSON-lines decision log, shared by every worker of a host.

Each record is one line written with one write() under an exclusive flock, so
lines from different workers never interleave or tear. Live dispatch records
are fsynced before the dispatch is reported; paper records (SIMULATION) are
buffered and flushed in the background. The log is also this host's memory of
which opportunity_ids were dispatched, and the dispatch outbox
(omni_mev.trading.outbox): a `dispatch` line is an intent, an `outcome` line
its one end, and a `resend` line a worker taking over the intent of one that
died.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)
DISPATCH_EVENT = "dispatch"
OUTCOME_EVENT = "outcome"
PAPER_EVENT = "paper"
REFUSED_EVENT = "refused"
RESEND_EVENT = "resend"
# Lines the catch-up reads (orjson writes no spaces); paper records, the bulk, are skipped unparsed.
_TRACKED = (b'"event":"dispatch"', b'"event":"outcome"', b'"event":"resend"')
PAPER_FLUSH_S = 1.0
PAPER_BUFFER_LIMIT = 512


def encode(record: dict[str, Any]) -> bytes:
    """One record as one line."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


class DecisionLog:
    """The log file, its cross-process lock, and the dispatched ids seen in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()  # threads of this process; flock covers processes
        self._dispatched: set[str] = set()
        # Intents without an outcome yet, by id: their dispatch record, its owner updated by resend records.
        self._open: dict[str, dict[str, Any]] = {}
        self._read_offset = 0
        self._paper: list[bytes] = []
        self._paper_lock = threading.Lock()  # request thread vs flusher; never held during I/O
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()

    def _descriptor(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        return self._fd

    @contextmanager
    def locked(self) -> Iterator["LockedLog"]:
        """Exclusive access across the host's workers, with the dispatched ids up to date."""
        with self._lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._catch_up(fd)
                yield LockedLog(self, fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _catch_up(self, fd: int) -> None:
        """Read what other workers appended since our last look."""
        size = os.fstat(fd).st_size
        if size < self._read_offset:  # rotated or truncated: start over
            self._read_offset = 0
            self._dispatched.clear()
            self._open.clear()
        if size == self._read_offset:
            return
        data = os.pread(fd, size - self._read_offset, self._read_offset)
        complete = data.rfind(b"\n") + 1
        for line in data[:complete].splitlines():
            if not any(marker in line for marker in _TRACKED):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._track(record)
        self._read_offset += complete

    def _track(self, record: dict[str, Any]) -> None:
        """Keep the dispatched ids and the open intents up to date with one record."""
        event, opportunity_id = record.get("event"), record.get("opportunity_id")
        if event == DISPATCH_EVENT:
            self._dispatched.add(opportunity_id)
            self._open[opportunity_id] = record
        elif event == OUTCOME_EVENT:
            self._open.pop(opportunity_id, None)
        elif event == RESEND_EVENT and opportunity_id in self._open:
            self._open[opportunity_id] = {**self._open[opportunity_id], "owner": record.get("owner")}

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
        if not batch:
            return
        with self._lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.write(fd, b"".join(batch))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


class LockedLog:
    """The log while this process holds its lock."""

    def __init__(self, owner: DecisionLog, fd: int) -> None:
        self._owner = owner
        self._fd = fd

    def was_dispatched(self, opportunity_id: str) -> bool:
        """Whether any worker of this host logged a dispatch of this id."""
        return opportunity_id in self._owner._dispatched

    def has_outcome(self, opportunity_id: str) -> bool:
        """Whether this dispatched id already has its one outcome."""
        return opportunity_id in self._owner._dispatched and opportunity_id not in self._owner._open

    def open_intents(self) -> list[dict[str, Any]]:
        """Dispatch records of this host without an outcome yet, oldest first."""
        return list(self._owner._open.values())

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Records in one write() and one fsync, on disk before anyone is told (a batch's intents, a group of
        outcomes)."""
        if not records:
            return
        data = b"".join(map(encode, records))
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # close a line a crash left unterminated
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: never leave half a line behind
            raise OSError(f"short write to {self._owner.path}")
        os.fsync(self._fd)
        self._owner._read_offset += len(data)
        for record in records:
            self._owner._track(record)
