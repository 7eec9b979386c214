"""Which of a master's workers are still loading the application: markers that a reload's old workers read.

On a reload (HUP, which every promotion sends) gunicorn forks the new workers
and at once asks the old ones to stop. A new worker takes a few hundred
milliseconds to load its model; old workers that stopped accepting at once
would leave requests waiting in the listen backlog meanwhile (measured: a p99
of 125 ms through a reload, docs/benchmarks.md). So each worker is marked
while it loads, and an old worker of omni-mev's keeps serving until no
sibling is loading (omni_mev.workers). The master marks a worker before it
forks it (gunicorn's pre_fork hook, by the worker's age: its pid is not known
yet), so no old worker can look in the moment between the fork and the new
worker's first step; the new worker swaps that marker for one by its pid
(post_fork), removes it once loaded (post_worker_init), and the master removes
a dead worker's (child_exit).

A leaf: gunicorn's master imports it with the worker class.
"""
from __future__ import annotations

import os
from pathlib import Path

BOOT_DIR_VARIABLE = "OMNI_MEV_BOOT_DIR"
SUFFIX = ".loading"
# A worker being forked: marked by its age (gunicorn's count of the workers it spawned).
FORKING = "fork-"


def _directory() -> Path | None:
    raw = os.environ.get(BOOT_DIR_VARIABLE)
    return Path(raw) if raw else None


def mark_forking(age: int) -> None:
    """In the master, before the fork: the worker of this age is loading from before it exists."""
    directory = _directory()
    if directory is not None:
        (directory / f"{FORKING}{age}{SUFFIX}").touch()


def mark_loading(pid: int, age: int) -> None:
    """This worker (its pid and age) is loading the application."""
    directory = _directory()
    if directory is not None:
        (directory / f"{pid}{SUFFIX}").touch()
        (directory / f"{FORKING}{age}{SUFFIX}").unlink(missing_ok=True)


def forget(pid: int, age: int) -> None:
    """This worker is done loading, or gone."""
    directory = _directory()
    if directory is not None:
        (directory / f"{pid}{SUFFIX}").unlink(missing_ok=True)
        (directory / f"{FORKING}{age}{SUFFIX}").unlink(missing_ok=True)


def siblings_loading(pid: int) -> bool:
    """Whether a worker other than `pid` is alive and still loading."""
    directory = _directory()
    if directory is None:
        return False
    for marker in directory.glob(f"*{SUFFIX}"):
        if marker.name.startswith(FORKING):
            return True  # a sibling being forked, not yet able to mark itself
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
