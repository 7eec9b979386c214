"""KServe's own SDK clients (`kserve.InferenceRESTClient`, `kserve.InferenceGRPCClient`) against the real service and
stream server: health and readiness as KServe's client reads them (a JSON body on REST), and inference in JSON and
with binary tensors, answering what /predict/batch answers for the same rows.

The clients run in an interpreter of their own (tests/kserve_probe.py). kserve 0.21's clients have no metadata
call; the model's metadata is checked with the stock Triton clients (tests/test_v2.py, tests/test_grpc.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.kserve_probe import MODEL, windows
from tests.servers import Gunicorn, StreamServer, http

SEEDS = {"rest_json": 1, "rest_binary": 2, "grpc": 3}


@pytest.fixture(scope="module")
def servers():
    with Gunicorn(workers=1) as service, StreamServer() as stream:
        yield service, stream


def expected(service: Gunicorn, seed: int) -> tuple[list[float], list[bool]]:
    """/predict/batch's confidences and decisions for the rows the probe sends."""
    items = [{"features": row[0].tolist()} for row in windows(seed)]
    status, body = http("POST", service.url + "/predict/batch", {"items": items})[:2]
    assert status == 200, body
    return [r["confidence"] for r in body["results"]], [r["decision"] for r in body["results"]]


def test_kserves_clients_check_health_and_infer_in_json_and_binary_over_rest_and_grpc(servers):
    service, stream = servers
    probe = subprocess.run([sys.executable, "-m", "tests.kserve_probe", service.url, f"127.0.0.1:{stream.grpc_port}",
                            *(str(seed) for seed in SEEDS.values())], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-4000:]
    answers = json.loads(probe.stdout)
    assert answers["rest_health"] == answers["grpc_health"] == [True, True, True, False]
    for name, seed in SEEDS.items():
        confidences, decisions = expected(service, seed)
        answer = answers[name]
        assert (answer["id"], answer["model_name"]) == ("k1", MODEL), name
        assert np.allclose(answer["confidence"], confidences, atol=1e-6), name
        assert answer["decision"] == decisions, name
