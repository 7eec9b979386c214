"""The part of kustomize that deploy/kubernetes uses, to render its bases and overlays offline in the tests.

Supported: `resources` (files and directories with a kustomization.yaml),
`namespace`, `images` (newName, newTag) and `patches` with a target and an
inline JSON 6902 patch. Any other field fails the rendering, so a manifest
that starts using more of kustomize fails the tests instead of being checked
as something it is not; `kubectl kustomize` renders the same documents.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class Unsupported(Exception):
    """The kustomization uses a field this subset does not render."""


def render(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize directory` prints."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)} not rendered by tests/kustomize_subset.py")
    documents: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            documents += render(path)
        else:
            documents += [document for document in yaml.safe_load_all(path.read_text()) if document]
    documents = copy.deepcopy(documents)
    for patch in kustomization.get("patches", []):
        _apply(patch, documents, directory)
    for image in kustomization.get("images", []):
        _set_image(image, documents)
    if "namespace" in kustomization:
        for document in documents:
            if document["kind"] not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = kustomization["namespace"]
    return documents


def _apply(patch: dict[str, Any], documents: list[dict[str, Any]], directory: Path) -> None:
    if set(patch) != {"target", "patch"}:
        raise Unsupported(f"{directory}: a patch needs exactly a target and an inline JSON 6902 patch")
    target = patch["target"]
    matched = [d for d in documents
               if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
    if len(matched) != 1:
        raise Unsupported(f"{directory}: patch target {target} matches {len(matched)} documents")
    operations = yaml.safe_load(patch["patch"])
    patched = jsonpatch.apply_patch(matched[0], operations)
    documents[documents.index(matched[0])] = patched


def _set_image(image: dict[str, Any], documents: list[dict[str, Any]]) -> None:
    found = False
    for document in documents:
        spec = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
                found = True
    if not found:
        raise Unsupported(f"images: no container runs {image['name']}")
