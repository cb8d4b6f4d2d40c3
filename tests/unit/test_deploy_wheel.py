"""The wheel the images install carries its data and runs outside the checkout.

Built offline (``pip wheel --no-build-isolation``: the build backend is already in .venv) from what
the image's Dockerfile copies, installed into a fresh venv under a temporary directory, with .venv's site-packages appended
as a plain path (its dependencies, no network) -- a plain path, so .venv's editable-install hook for
this checkout is never processed and cannot shadow the wheel. Then ``oncostream run --size small`` from
another temporary directory must triage every synthesised study.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from oncostream.settings import REPO_ROOT

# what settings.py and postprocess find relative to their own files
SHIPPED = ("oncostream/_data/model_repository/mammo_classifier/1/model.onnx",
           "oncostream/_data/model_repository/ldct_nodule_detector/contract.yaml",
           "oncostream/_data/model_repository/ldct_screening/steps.yaml",
           "oncostream/_data/model_repository/mammo_classifier/README.md",
           "oncostream/_data/docs/triage_event.schema.json",
           "postprocess/programs/default.yaml")


def _image_build_context(target: Path) -> Path:
    """What deploy/docker/oncostream.Dockerfile copies into its wheel stage (each to the same relative
    path), copied to ``target``: the wheel is built from exactly that, never from a stale build/ folder."""
    dockerfile = (REPO_ROOT / "deploy" / "docker" / "oncostream.Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                origin, copy = REPO_ROOT / source, target / source
                if origin.is_dir():
                    shutil.copytree(origin, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, copy)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = _image_build_context(tmp_path_factory.mktemp("context"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(source)], check=True, timeout=300)
    (built,) = out.glob("oncostream-*.whl")
    return built


def test_wheel_carries_models_programs_and_schema(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"the wheel lacks {missing}"
    committed = {p.relative_to(REPO_ROOT / "model_repository").as_posix()
                 for p in (REPO_ROOT / "model_repository").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    shipped = {n.removeprefix("oncostream/_data/model_repository/") for n in names
               if n.startswith("oncostream/_data/model_repository/")}
    assert committed <= shipped, f"model_repository files not in the wheel: {sorted(committed - shipped)}"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("site") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_oncostream_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ONCOSTREAM_", "PYTHON"))}


def test_installed_wheel_finds_its_data_outside_the_checkout(installed: Path, tmp_path: Path):
    probe = ("import json, oncostream, oncostream.settings as s, postprocess.priority as p; "
             "print(json.dumps([oncostream.__file__, str(s.DEFAULT_MODEL_REPOSITORY), "
             "str(s.TRIAGE_EVENT_SCHEMA), str(p.PROGRAMS_DIR)]))")
    found = json.loads(subprocess.run([str(installed / "bin" / "python"), "-c", probe], cwd=tmp_path,
                                      env=_clean_env(), check=True, capture_output=True, text=True).stdout)
    for path in found:
        assert Path(path).resolve().is_relative_to(installed.resolve()), f"{path} is not in the installed venv"
        assert not Path(path).resolve().is_relative_to(REPO_ROOT), f"{path} comes from the checkout"
    assert Path(found[1], "mammo_classifier", "contract.yaml").is_file()
    assert Path(found[2]).is_file() and Path(found[3], "default.yaml").is_file()


def test_installed_wheel_triages_a_small_synthetic_set(installed: Path, tmp_path: Path):
    result = subprocess.run([str(installed / "bin" / "oncostream"), "run", "--size", "small", "--out", "out"],
                            cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "out" / "triage.jsonl").read_text().splitlines()]
    # the demo set: 3 mammography exams and 2 LDCT series (oncostream.app.run)
    assert sorted(e["modality"] for e in events) == ["CT", "CT", "MG", "MG", "MG"]
    assert all(e["priority"] in {"URGENT", "HIGH", "ROUTINE", "LOW"} for e in events)
    assert len(list((tmp_path / "out" / "sr").glob("*"))) == len(events)
