"""deploy/k8s: every kustomization names files that exist, and every oncostream command a manifest
runs parses with the real CLI parser (the command surface is a contract, DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from oncostream.cli import build_parser
from oncostream.settings import REPO_ROOT, Settings

K8S = REPO_ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))


def _documents():
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc and doc.get("apiVersion"):
                yield path, doc


def _containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("initContainers", []) + spec.get("containers", [])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_references_exist(kustomization: Path):
    spec = yaml.safe_load(kustomization.read_text())
    referenced = spec.get("resources", []) + [p["path"] for p in spec.get("patches", []) if "path" in p]
    assert referenced, "a kustomization with nothing in it"
    for ref in referenced:
        assert (kustomization.parent / ref).exists(), f"{kustomization}: {ref} does not exist"


def _oncostream_commands():
    for path, doc in _documents():
        for container in _containers(doc):
            command = container.get("command", [])
            if command and command[0] == "oncostream":
                yield pytest.param(command[1:], id=f"{path.name}:{container['name']}")
    gpu_patch = yaml.safe_load((K8S / "overlays" / "gpu" / "triton-gpu.yaml").read_text())
    for op in gpu_patch:
        if op["path"].endswith("/command"):
            yield pytest.param(op["value"][1:], id="gpu-overlay:init")


@pytest.mark.parametrize("argv", list(_oncostream_commands()))
def test_manifest_commands_parse_with_the_cli(argv):
    build_parser().parse_args(argv)


def test_configmap_keys_are_real_settings():
    (configmap,) = [doc for _, doc in _documents() if doc["kind"] == "ConfigMap"]
    fields = {f"ONCOSTREAM_{name.upper()}" for name in Settings.model_fields}
    unknown = set(configmap["data"]) - fields
    assert not unknown, f"ConfigMap sets keys no setting reads: {sorted(unknown)}"
