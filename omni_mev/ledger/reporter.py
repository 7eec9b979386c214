"""Live quality computed off the request path: one reporter process per instance writes a report file that
/quality (in every worker) and the quality gauges (in gunicorn's master) only read.

gunicorn.conf.py starts the reporter (`python -m omni_mev.ledger.reporter`) when the master is ready and stops
it on exit; it also stops by itself when the master is gone. AI_QUALITY_REFRESH_S after its last report was
written (or later: it uses at most MAX_DUTY of a core, see pause_after) it reads the longest window of the ledger
once, computes every window of quality.WINDOWS for every model version, and replaces the file atomically. A report
therefore costs the ledger's database one read per cadence, whatever the number of clients polling /quality, and a
reader never sees a half-written file.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from omni_mev.jsonio import dumps
from omni_mev.ledger.quality import WINDOWS, window_figures
from omni_mev.ledger.store import Ledger, LedgerUnavailable

log = logging.getLogger(__name__)
REPORT_FILE = "quality.json"
# The share of one core the reporter may use on average.
MAX_DUTY = 0.05


def compute(ledger: Ledger, threshold: float | None, now: float) -> dict[str, Any]:
    """Every window's figures, per model version, from one read of the longest window."""
    longest = max(WINDOWS.values())
    records = ledger.records(now - longest, now)
    return {"computed_at": now, "threshold": threshold, "error": None,
            "windows": {name: window_figures(records, threshold, now - seconds, now)
                        for name, seconds in WINDOWS.items()}}


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Replace the report atomically (a new file renamed over the old one)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(dumps(report))
    os.replace(partial, path)


def report_once(ledger: Ledger, threshold: float | None, path: Path) -> dict[str, Any]:
    """Compute and write one report; a ledger that cannot be read gives a report that says so."""
    now = time.time()
    started = time.monotonic()
    try:
        report = compute(ledger, threshold, now)
    except LedgerUnavailable as error:
        log.warning("live quality not computed: %s", error.message)
        report = {"computed_at": now, "threshold": threshold, "error": error.message, "windows": {}}
    report["computed_in_s"] = round(time.monotonic() - started, 3)
    write_report(path, report)
    return report


class QualityReports:
    """The latest report in a directory, read again only when the file changed (one stat per call)."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / REPORT_FILE if directory is not None else None
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._report: dict[str, Any] | None = None

    def latest(self) -> dict[str, Any] | None:
        """The last report written, or None when there is none (yet)."""
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        with self._lock:
            if self._seen != (stat.st_mtime_ns, stat.st_ino):
                try:
                    self._report = orjson.loads(self.path.read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    return self._report
                self._seen = (stat.st_mtime_ns, stat.st_ino)
            return self._report


def pause_after(took_s: float, refresh_s: float) -> float:
    """How long to wait after a report that took took_s: refresh_s, or longer so that reporting uses at most
    MAX_DUTY of a core (its cost grows with the ledger's last 7 days; the workers come first)."""
    return max(refresh_s, took_s * (1.0 - MAX_DUTY) / MAX_DUTY)


def serve(ledger: Ledger, threshold: float | None, directory: Path, refresh_s: float, parent: int) -> None:
    """Report, then pause (pause_after), for as long as `parent` (the master) lives."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    while os.getppid() == parent:
        started = time.monotonic()
        report_once(ledger, threshold, path)
        deadline = time.monotonic() + pause_after(time.monotonic() - started, refresh_s)
        while time.monotonic() < deadline and os.getppid() == parent:
            time.sleep(min(0.5, refresh_s))


class ReporterProcess:
    """The reporter as the master's child, started again (after RESTART_S) whenever it ends while wanted.

    Started with posix_spawn, not subprocess.Popen: Popen waits on a pipe until its child has exec'd, and a
    gunicorn worker forked by the master at that moment inherits the pipe's write end, so the wait never ends.
    gunicorn's master reaps every child it sees end, this one included: its end is noticed either way.
    """

    RESTART_S = 1.0
    POLL_S = 0.2

    def __init__(self) -> None:
        self.pid: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="quality-reporter", daemon=True)

    def start(self) -> ReporterProcess:
        self._spawn()  # now, in the caller's thread (the first one before any worker is forked)
        self._thread.start()
        return self

    def _spawn(self) -> None:
        self.pid = os.posix_spawn(sys.executable, [sys.executable, "-m", __name__], os.environ)

    def _running(self) -> bool:
        """Whether the reporter still runs (reaping it here if it ended, unless gunicorn already did)."""
        if self.pid is None:
            return False
        try:
            ended, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return ended == 0

    def _supervise(self) -> None:
        while not self._stopping.wait(self.POLL_S):
            if self._running():
                continue
            if self._stopping.wait(self.RESTART_S):
                return
            log.error("quality reporter (pid %s) ended; starting it again", self.pid)
            self._spawn()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if not self._running():
            return
        pid = self.pid
        assert pid is not None  # _running() says it was spawned
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._running():
            os.kill(pid, signal.SIGKILL)


def main() -> int:
    """The reporter process: settings from the environment, as the service's."""
    from omni_mev.config import ConfigError, load_settings
    from omni_mev.ledger.store import SqlLedger

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [omni-mev quality] %(message)s")
    try:
        settings = load_settings()
    except ConfigError as error:
        sys.stderr.write(f"omni-mev quality reporter: configuration error: {error}\n")
        return 2
    if settings.ledger_url is None or settings.quality_dir is None:
        return 0
    # Second to the workers: on a machine with as many workers as cores, scoring comes first.
    os.nice(10)
    try:
        serve(SqlLedger(settings.ledger_url), settings.threshold, settings.quality_dir, settings.quality_refresh_s,
              os.getppid())
    except KeyboardInterrupt:  # Ctrl-C on `make serve` reaches the whole process group
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
