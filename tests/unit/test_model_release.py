"""Every network's contract names the sha256 of its weights; the version reported with results (and
so the output UIDs) changes whenever the weights or their calibration do, and weights that are not
the contract's are refused at load and at Triton repository build."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ingest.backends.embedded import EmbeddedBackend
from oncostream.errors import ContractMismatch
from oncostream.model_build import ModelBuildError, build_repository
from oncostream.model_contract import MODEL_NAMES, file_sha256, load_contract, onnx_path, record_weights, weights_problem
from oncostream.settings import Settings
from oncostream.uids import model_fingerprint

SOURCE = Settings().model_repository


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_committed_weights_are_the_ones_the_contract_names(name):
    contract = load_contract(name, SOURCE)
    assert weights_problem(contract, onnx_path(name, SOURCE)) is None
    assert contract.release.startswith(f"{contract.version}+") and len(contract.release) == len(contract.version) + 13


def test_release_follows_weights_and_calibration():
    contract = load_contract("mammo_classifier", SOURCE)
    other_weights = contract.model_copy(update={"weights_sha256": "0" * 64})
    refitted = contract.model_copy(update={"calibration": {**contract.calibration, "exam_bias": 0.0}})
    releases = {contract.release, other_weights.release, refitted.release}
    assert len(releases) == 3
    assert contract.model_copy(update={"weights_sha256": None}).release == contract.version


@pytest.fixture()
def repository(tmp_path) -> Path:
    copy = tmp_path / "model_repository"
    shutil.copytree(SOURCE, copy)
    return copy


def _re_export(repository: Path, name: str) -> None:
    """The same network written again with different bytes (ONNX Runtime's optimised graph), as a
    retraining run's export would leave it: same contract, new weights file."""
    import onnxruntime as ort

    path = onnx_path(name, repository)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".new"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    path.with_suffix(".new").replace(path)


def test_retrained_weights_get_a_new_release_and_new_output_uids(repository):
    before = EmbeddedBackend(repository).model_versions()
    old_digest = load_contract("ldct_denoise", repository).weights_sha256
    _re_export(repository, "ldct_denoise")
    with pytest.raises(ContractMismatch, match="weights replaced") as error:
        EmbeddedBackend(repository)
    assert error.value.model == "ldct_denoise"

    text_before = (repository / "ldct_denoise" / "contract.yaml").read_text()
    digest = record_weights("ldct_denoise", repository)
    text_after = (repository / "ldct_denoise" / "contract.yaml").read_text()
    assert digest == file_sha256(onnx_path("ldct_denoise", repository)) != old_digest
    assert text_after == text_before.replace(old_digest, digest), "only the digest line changes"

    after = EmbeddedBackend(repository).model_versions()
    assert after["ldct_denoise"] != before["ldct_denoise"]
    assert {k: v for k, v in after.items() if k != "ldct_denoise"} == \
        {k: v for k, v in before.items() if k != "ldct_denoise"}
    assert model_fingerprint(after) != model_fingerprint(before), "output UIDs derive from the fingerprint"


def test_repository_build_refuses_weights_the_contract_does_not_name(repository, tmp_path):
    _re_export(repository, "ldct_nodule_detector")
    with pytest.raises(ModelBuildError, match="ldct_nodule_detector"):
        build_repository("cpu", tmp_path / "built", repository)


def test_the_detection_operating_point_is_part_of_the_detector_contract(repository):
    from oncostream.evaluation.ldct import LdctModels
    from oncostream.model_contract import record_calibration

    before = EmbeddedBackend(repository).model_versions()["ldct_nodule_detector"]
    record_calibration("ldct_nodule_detector", {"detection_threshold": 0.5}, repository)
    assert load_contract("ldct_nodule_detector", repository).calibration == {"detection_threshold": 0.5}
    assert LdctModels(repository).threshold == 0.5
    # a moved operating point reports different nodules: a new release, so new output UIDs
    assert EmbeddedBackend(repository).model_versions()["ldct_nodule_detector"] != before


@pytest.mark.parametrize("calibration", [{}, {"detection_threshold": 1.5}])
def test_a_detector_contract_without_a_valid_operating_point_is_refused(repository, calibration):
    path = repository / "ldct_nodule_detector" / "contract.yaml"
    text = path.read_text()
    start = text.index("calibration:")
    end = text.index("weights_sha256:")
    replacement = "calibration: {}\n" if not calibration else "calibration:\n  detection_threshold: 1.5\n"
    path.write_text(text[:start] + replacement + text[end:])
    with pytest.raises(ValueError, match="detection_threshold must be a probability"):
        load_contract("ldct_nodule_detector", repository)


def test_a_rewritten_contract_is_read_again_and_an_unchanged_one_is_not_parsed_again(tmp_path):
    shutil.copytree(SOURCE / "mammo_classifier", tmp_path / "mammo_classifier")
    first = load_contract("mammo_classifier", tmp_path)
    assert load_contract("mammo_classifier", tmp_path) is first
    path = tmp_path / "mammo_classifier" / "contract.yaml"
    threshold = first.calibration["region_threshold"]
    path.write_text(path.read_text().replace(f"region_threshold: {threshold!r}", "region_threshold: 0.5"))
    assert load_contract("mammo_classifier", tmp_path).calibration["region_threshold"] == 0.5
