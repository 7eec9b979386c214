"""`make test-deploy`: the rendered Kubernetes base run with `podman kube play` on the images `make image` builds.

    python -m tests.deploy_check [--no-build]     (--no-build: the images make image built last)

What runs: the HTTP Deployment (its init container making the shipped model the registry's first champion), the
stream server's Deployment, the ConfigMap, the Secret (as podman's secret), the registry's claim (as a podman
volume), and the retrainer's CronJob's job template as a Pod, against a PostgreSQL started on loopback (the
ledger and the registry's database). It checks that the pods start and answer as their probes would ask, that
/predict answers, that the stream server answers over WebSocket and gRPC, and that the retrainer runs once on the
outcomes posted meanwhile and registers a challenger, which the serving pods load as their shadow.

Pods share the host's network (podman's bridge needs more than a test should ask of a host), each on free
loopback-reachable ports given through the ConfigMap and the pods' PORT; probes and preStop hooks are the
cluster's, so they are left out and their routes asked directly. Where podman cannot run a container, it says
why and exits 0 (skipped); a failure exits 1.
"""
from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.servers import PostgresServer, free_port, http, wait_until

KUBECTL = Path(sys.executable).parent / "kubectl"
CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
API_KEY = "deploy-check-key-0123456789"
IMAGE = "omni-mev:latest"
TRAINER_IMAGE = "omni-mev-trainer:latest"
# A CPU build of torch on this host's disk, for the trainer's image (the default index serves the CUDA build).
LOCAL_WHEELS = Path("/opt/wheels")
OUTCOMES = 600
STEP_TIMEOUT_S = 600


class Skip(Exception):
    """podman cannot run here: the check is skipped, saying why."""


def log(message: str) -> None:
    print(f"test-deploy: {message}", flush=True)


def podman(*args: str, check: bool = True, timeout: float = STEP_TIMEOUT_S, stdin: str | None = None
           ) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}: {result.stderr.strip()[-2000:]}")
    return result


def can_run_containers() -> None:
    if shutil.which("podman") is None:
        raise Skip("podman is not installed (apt-get install podman)")
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if probe.returncode != 0:
        raise Skip(f"podman cannot run here: {probe.stderr.strip().splitlines()[-1:]}")


def build_images() -> dict[str, float]:
    """The service's image, and the retrainer's (the train extra, torch's CPU build from this host's wheels)."""
    seconds = {}
    for image, args in ((IMAGE, ""), (TRAINER_IMAGE, _trainer_args())):
        started = time.monotonic()
        result = subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={image}", f"IMAGE_ARGS={args}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"make image IMAGE={image}: {result.stdout[-3000:]}{result.stderr[-3000:]}")
        seconds[image] = round(time.monotonic() - started, 1)
    return seconds


def _trainer_args() -> str:
    wheels = sorted(LOCAL_WHEELS.glob("torch-2.13.0+cpu-*.whl")) if LOCAL_WHEELS.is_dir() else []
    if not wheels:
        raise Skip(f"no CPU build of torch in {LOCAL_WHEELS} for the retrainer's image (give one, or "
                   "TORCH_INDEX_URL, docs/kubernetes.md)")
    return f"--build-arg EXTRAS=train --build-arg TORCH_FIND_LINKS=/wheels -v {LOCAL_WHEELS}:/wheels:ro"


def render() -> list[dict[str, Any]]:
    result = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "deploy" / "kubernetes" / "base")],
                            capture_output=True, text=True, timeout=120, check=True)
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def for_podman(pod_spec: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """A pod spec as podman plays it on the host's network: the cluster's probes and hooks out, PORT free."""
    spec = copy.deepcopy(pod_spec)
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        # On the host's network, a container's ports are its settings' (port mappings need podman's bridge).
        for key in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle", "ports"):
            container.pop(key, None)
        for variable in container.get("env", []):
            if variable["name"] == "PORT":
                variable["value"] = str(ports["http"])
    spec.pop("topologySpreadConstraints", None)
    # podman gives an emptyDir to root, where Kubernetes' fsGroup gives it to the pod's group, and mounts no
    # tmpfs for a read-only root in kube play: the emptyDirs go, and the played containers write /tmp in their
    # own layer (/dev/shm is a tmpfs anyway). The cluster's read-only root is checked by make image-check.
    scratch = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
    spec["volumes"] = [volume for volume in spec.get("volumes", []) if volume["name"] not in scratch]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] not in scratch]
        container["securityContext"]["readOnlyRootFilesystem"] = False
    return spec


class Deployment:
    """The played pods, the database and the podman objects they use; everything removed at the end."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.documents = render()
        self.by_kind = {(d["kind"], d["metadata"]["name"]): d for d in self.documents}
        self.ports = {"http": free_port(), "metrics": free_port(), "websocket": free_port(), "grpc": free_port()}
        self.database = PostgresServer()
        self.played: list[Path] = []

    def __enter__(self) -> Deployment:
        self.database.start()
        url = self.database.url
        secret = {"AI_API_KEYS": API_KEY, "AI_LEDGER_URL": url, "AI_MODEL_REGISTRY_DB": url}
        podman("secret", "rm", "omni-mev-secrets", check=False)
        (self.scratch / "secret.json").write_text(json.dumps(
            {name: base64.b64encode(value.encode()).decode() for name, value in secret.items()}))
        podman("secret", "create", "omni-mev-secrets", str(self.scratch / "secret.json"))
        settings = copy.deepcopy(self.by_kind[("ConfigMap", "omni-mev-settings")])
        settings["data"].update({"PROMETHEUS_PORT": str(self.ports["metrics"]), "REDIS_HOST": "",
                                 "AI_STREAM_PORT": str(self.ports["websocket"]),
                                 "AI_GRPC_PORT": str(self.ports["grpc"])})
        (self.scratch / "configmap.yaml").write_text(yaml.safe_dump(settings))
        # The claim, as podman's volume of the same name, writable by the image's user.
        podman("volume", "rm", "-f", "omni-mev-registry", check=False)
        podman("volume", "create", "omni-mev-registry")
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", "omni-mev-registry").stdout.strip()
        os.chown(mountpoint, 10001, 10001)
        return self

    def play(self, name: str, pod_spec: dict[str, Any], kind: str = "Deployment") -> None:
        spec = for_podman(pod_spec, self.ports)
        document: dict[str, Any]
        if kind == "Deployment":
            document = copy.deepcopy(self.by_kind[("Deployment", name)])
            document["spec"]["replicas"] = 1
            document["spec"]["template"]["spec"] = spec
            # podman 4.3 removes a "once" init container while it still winds down, and fails the pod: keep it.
            for metadata in (document["metadata"], document["spec"]["template"]["metadata"]):
                metadata.setdefault("annotations", {})["io.podman.annotations.init.container.type"] = "always"
            # podman 4.3 applies the pod's restart policy to its init containers too: restarted after each success,
            # the init container can keep the main one from ever starting. A container that fails still restarts.
            spec["restartPolicy"] = "OnFailure"
        else:
            document = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                        "spec": spec}
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        self.played.append(path)
        podman("kube", "play", "--network", "host", "--configmap", str(self.scratch / "configmap.yaml"), str(path))

    def logs(self) -> str:
        found = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        return "\n".join(f"--- {name}\n{_output(name)}"
                         for name in found if name.startswith("omni-mev"))

    def __exit__(self, *exc: Any) -> None:
        for path in reversed(self.played):
            podman("kube", "down", str(path), check=False)
        podman("volume", "rm", "-f", "omni-mev-registry", check=False)
        podman("secret", "rm", "omni-mev-secrets", check=False)
        self.database.stop()


def _output(container: str) -> str:
    logged = podman("logs", container, check=False)
    return (logged.stdout + logged.stderr)[-3000:]


def step(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    started = time.monotonic()
    value = wait_until(check, timeout, interval=0.5, what=what)
    log(f"{what}: {time.monotonic() - started:.1f} s")
    return value


def answers(url: str, path: str, expect: int = 200, headers: dict[str, str] | None = None) -> Any:
    try:
        status, body, _ = http("GET", url + path, headers=headers, timeout=2)
    except OSError:
        return None
    return body if status == expect else None


def check(deployment: Deployment) -> dict[str, Any]:
    from bench.closed_loop import post_outcomes, score_stream, windows
    from omni_mev.client import Client
    from omni_mev.training.simulate import simulate

    figures: dict[str, Any] = {"ports": deployment.ports}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    base = deployment.by_kind
    deployment.play("omni-mev", base[("Deployment", "omni-mev")]["spec"]["template"]["spec"])
    deployment.play("omni-mev-stream", base[("Deployment", "omni-mev-stream")]["spec"]["template"]["spec"])
    url = f"http://127.0.0.1:{deployment.ports['http']}"
    step("the HTTP pod ready (/v2/health/ready)", lambda: answers(url, "/v2/health/ready"))
    status = http("GET", url + "/status", headers=auth)[1]
    figures["champion"] = status["model_version"]
    assert status["registry"] == base[("ConfigMap", "omni-mev-settings")]["data"]["AI_MODEL_REGISTRY"], status
    code, body, _ = http("POST", url + "/predict", {"features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]},
                         headers=auth)
    assert code == 200 and 0.0 <= body["confidence"] <= 1.0, body
    figures["predict_confidence"] = body["confidence"]
    assert http("POST", url + "/predict", {"features": [1] * 8})[0] == 401  # the Secret's key is in force

    stream_http = f"http://127.0.0.1:{deployment.ports['websocket']}"
    step("the stream pod ready (/health, gRPC health SERVING)", lambda: answers(stream_http, "/health")
         and _grpc_serving(deployment.ports["grpc"]))
    figures["websocket_confidence"] = _websocket_answer(deployment.ports["websocket"])
    figures["grpc_confidence"] = _grpc_answer(deployment.ports["grpc"])
    # The stream pod serves the champion the HTTP pod does: the same confidence (FP32 on gRPC).
    assert figures["websocket_confidence"] == figures["predict_confidence"], figures
    assert abs(figures["grpc_confidence"] - figures["predict_confidence"]) < 1e-6, figures

    # Outcomes for the retrainer to learn from, through the HTTP pod.
    stream = simulate(OUTCOMES, seed=5)
    ids = [f"deploy-{i}" for i in range(OUTCOMES)]
    with Client(url, api_key=API_KEY, timeout=30) as client:
        score_stream(client, windows(stream.features), ids)
        post_outcomes(client, ids, stream)
    job = base[("CronJob", "omni-mev-retrainer")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    job = copy.deepcopy(job)
    (container,) = job["containers"]
    # Once, now, on the outcomes just posted, with a small training budget.
    container["command"] = [*container["command"], "--now", "--max-epochs", "2", "--batches-per-epoch", "20"]
    container["env"] = [{"name": "AI_RETRAIN_MIN_OUTCOMES", "value": str(OUTCOMES // 2)}]
    started = time.monotonic()
    deployment.play("omni-mev-retrainer", job, kind="Pod")
    name = "omni-mev-retrainer-retrainer"
    wait_until(lambda: podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
               == "exited", STEP_TIMEOUT_S, interval=1.0, what="the retrainer's run")
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    # Its summary is the JSON line on stdout (its log lines go to stderr).
    summary = podman("logs", name).stdout.strip().splitlines()
    result = json.loads(next(line for line in reversed(summary) if line.startswith("{")))
    figures["retrainer"] = {"exit_code": int(exit_code), "action": result["action"], "version": result["version"],
                            "seconds": round(time.monotonic() - started, 1)}
    log(f"the retrainer: {result['action']} {result['version']} in {figures['retrainer']['seconds']} s")
    assert exit_code == "0" and result["action"] == "trained" and result["version"], result
    step("the serving pods load the new challenger as their shadow",
         lambda: http("GET", url + "/status", headers=auth)[1].get("shadow_version") == result["version"], timeout=60)
    figures["shadow_version"] = result["version"]
    return figures


def _grpc_serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def _websocket_answer(port: int) -> float:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/stream", additional_headers={"X-API-Key": API_KEY}) as ws:
        ws.send(json.dumps({"id": "deploy", "features": [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]}))
        answer = json.loads(ws.recv(timeout=10))
    assert answer["id"] == "deploy", answer
    return float(answer["confidence"])


def _grpc_answer(port: int) -> float:
    import numpy as np
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    features = triton_grpc.InferInput("features", [1, 8], "FP32")
    features.set_data_from_numpy(np.array([[10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]], np.float32))
    result = client.infer("lstm_omni", [features], headers={"x-api-key": API_KEY})
    return float(result.as_numpy("confidence").reshape(-1)[0])


def main() -> int:
    try:
        can_run_containers()
        built = {} if "--no-build" in sys.argv[1:] else build_images()
    except Skip as reason:
        log(f"skipped: {reason}")
        return 0
    log(f"images built: {built}")
    scratch = Path(tempfile.mkdtemp(prefix="omni-mev-deploy-"))
    deployment = Deployment(scratch)
    try:
        with deployment:
            try:
                figures = check(deployment)
            except Exception as error:  # noqa: BLE001 - any failure is reported with the pods' logs
                log(f"FAILED: {error}")
                print(deployment.logs(), file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"passed: {json.dumps({**figures, 'image_build_s': built})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
