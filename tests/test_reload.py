"""Zero-downtime model reload with HUP, a broken new model, and workers killed under load."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import onnx

from omni_mev.runtime.base import version_of
from tests.servers import Gunicorn, Stream, versions, wait_until


def republish(model: Path, release: str) -> str:
    """Write a new version of the ONNX model in place, atomically; return its version."""
    proto = onnx.load(str(model))
    proto.metadata_props.append(onnx.StringStringEntryProto(key="release", value=release))
    data = proto.SerializeToString()
    scratch = model.with_name(model.name + ".new")
    scratch.write_bytes(data)
    os.replace(scratch, model)
    return version_of(data)


def replace_with_garbage(path: Path) -> None:
    scratch = path.with_name(path.name + ".new")
    scratch.write_bytes(b"this is not a model" * 100)
    os.replace(scratch, path)


def test_hup_reload_swaps_model_without_failures(model_copy):
    old_version = version_of(model_copy.read_bytes())
    with Gunicorn({"AI_MODEL_PATH": str(model_copy)}) as server, Stream(server) as stream:
        assert versions(server) == {old_version}
        old_workers = server.worker_pids()
        new_version = republish(model_copy, "2")
        server.signal(signal.SIGHUP)
        wait_until(lambda: not (server.worker_pids() & old_workers) and len(server.worker_pids()) == 2, 30,
                   what="old workers retired")
        wait_until(lambda: versions(server) == {new_version}, 15, what="new version everywhere")
        stream.advance(100)

        # A new model that cannot load: the last one that did keeps serving.
        replace_with_garbage(model_copy)
        replace_with_garbage(model_copy.with_suffix(".pt"))
        previous_workers = server.worker_pids()
        server.signal(signal.SIGHUP)
        wait_until(lambda: not (server.worker_pids() & previous_workers) and len(server.worker_pids()) == 2, 30,
                   what="workers reloaded with the broken model")
        stream.advance(100)
        status = server.get("/status")[1]
        assert (status["ai_engine"], status["model_type"], status["model_version"]) == ("online", "onnx", new_version)
        assert server.get("/health")[0] == 200

        def load_fallbacks() -> float:
            text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
            lines = [line for line in text.splitlines()
                     if line.startswith('ai_model_fallback_total{from_type="onnx",reason="load",to_type="onnx"}')]
            return float(lines[0].split()[-1]) if lines else 0.0

        # One per new worker; a worker still importing torch in post_fork (the
        # PyTorch step of its chain) counts a moment after its sibling serves.
        wait_until(lambda: load_fallbacks() >= 2, 30, what="both new workers fell back")
        time.sleep(0.5)
        assert load_fallbacks() == 2
        log = server.output()
    assert stream.failures == []
    assert "failed to load" in log and "last-known-good" in log


def test_worker_killed_under_load_is_respawned():
    with Gunicorn() as server, Stream(server, threads=4) as stream:
        victim = min(server.worker_pids())
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), 20,
                   what="worker respawned")
        failures_at_respawn = len(stream.failures)
        stream.advance(300)
        assert len(stream.failures) == failures_at_respawn  # nothing fails once it is back
    # Only requests the killed worker held can fail: at most one per client thread.
    assert len(stream.failures) <= 4
    assert stream.ok > 300


def test_old_workers_serve_until_the_new_ones_have_loaded():
    """A reload forks the new workers and stops the old ones at once. Held while loading (SIGSTOP), the new
    workers serve nothing: the old ones go on accepting and answering until the new ones are ready, then leave."""
    with Gunicorn(workers=2) as server:
        old_workers = server.worker_pids()
        server.signal(signal.SIGHUP)
        new_workers = wait_until(lambda: server.worker_pids() - old_workers, 5, interval=0.005,
                                 what="the new workers forked")
        for pid in new_workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            # New connections, one request each, while only the old workers can answer.
            for _ in range(20):
                assert server.get("/health", timeout=5)[0] == 200
            assert old_workers <= server.worker_pids()  # still there: handing over
        finally:
            for pid in new_workers:
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not (server.worker_pids() & old_workers), 30, what="the old workers gone")
        assert server.get("/health")[0] == 200


def test_a_worker_counts_as_loading_from_before_its_fork(tmp_path, monkeypatch):
    """The master marks a worker by its age before forking it, so an old worker never looks in the moment
    between the fork and the new worker's first step (stopped there, it would find no sibling loading and leave
    the listen backlog to a worker that cannot answer yet)."""
    from omni_mev import worker_boot

    monkeypatch.setenv(worker_boot.BOOT_DIR_VARIABLE, str(tmp_path))
    old = os.getpid()
    assert not worker_boot.siblings_loading(old)
    worker_boot.mark_forking(7)  # pre_fork, in the master
    assert worker_boot.siblings_loading(old)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        worker_boot.mark_loading(child.pid, 7)  # post_fork, in the new worker
        assert worker_boot.siblings_loading(old) and not worker_boot.siblings_loading(child.pid)
        worker_boot.forget(child.pid, 7)  # post_worker_init: loaded
        assert not worker_boot.siblings_loading(old) and list(tmp_path.iterdir()) == []
    finally:
        child.kill()
        child.wait()
