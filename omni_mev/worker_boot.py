"""Which of a master's workers are still loading the application: markers that a reload's old workers read.

On a reload (HUP, which every promotion sends) gunicorn forks the new workers
and at once asks the old ones to stop. A new worker takes a few hundred
milliseconds to load its model; old workers that stopped accepting at once
would leave requests waiting in the listen backlog meanwhile (measured: a p99
of 125 ms through a reload, docs/benchmarks.md). So each worker leaves a
marker while it loads (gunicorn's post_fork hook makes it, post_worker_init
removes it, child_exit removes a dead worker's), and an old worker of
omni-mev's keeps serving until no sibling is loading (omni_mev.workers).

A leaf: gunicorn's master imports it with the worker class.
"""
from __future__ import annotations

import os
from pathlib import Path

BOOT_DIR_VARIABLE = "OMNI_MEV_BOOT_DIR"
SUFFIX = ".loading"


def _directory() -> Path | None:
    raw = os.environ.get(BOOT_DIR_VARIABLE)
    return Path(raw) if raw else None


def mark_loading(pid: int) -> None:
    """This worker is loading the application."""
    directory = _directory()
    if directory is not None:
        (directory / f"{pid}{SUFFIX}").touch()


def forget(pid: int) -> None:
    """This worker is done loading, or gone."""
    directory = _directory()
    if directory is not None:
        (directory / f"{pid}{SUFFIX}").unlink(missing_ok=True)


def siblings_loading(pid: int) -> bool:
    """Whether a worker other than `pid` is alive and still loading."""
    directory = _directory()
    if directory is None:
        return False
    for marker in directory.glob(f"*{SUFFIX}"):
        other = int(marker.name.removesuffix(SUFFIX))
        if other == pid:
            continue
        try:
            os.kill(other, 0)
        except ProcessLookupError:
            marker.unlink(missing_ok=True)  # it died before its master reaped it
            continue
        except PermissionError:
            pass
        return True
    return False
