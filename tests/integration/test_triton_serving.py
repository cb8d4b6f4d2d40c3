"""The CPU repository served by the real Triton (pytriton wheel's tritonserver, started once per
session by tests/fixtures/triton.py) against the embedded backend on the same small synthetic studies."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from ingest.backends.base import LdctRaw, MammoRaw
from ingest.backends.embedded import EmbeddedBackend
from ingest.backends.triton import TritonBackend, TritonInferenceError, metadata_differences
from oncostream.errors import BackendUnavailable, ContractMismatch
from oncostream.model_build import model_names
from oncostream.model_contract import MODEL_NAMES, load_contract
from oncostream.services.base import free_port
from oncostream.settings import Settings

pytestmark = pytest.mark.integration

TOLERANCE = 1e-4  # probabilities and every other output, Triton vs embedded
SEED = 1_000_123  # an evaluation-range seed: never trained on


@pytest.fixture(scope="module")
def settings(triton_grpc) -> Settings:
    return Settings(backend="triton", triton_url=triton_grpc)


@pytest.fixture(scope="module")
def triton(settings) -> TritonBackend:
    backend = TritonBackend(settings)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def embedded(settings) -> EmbeddedBackend:
    return EmbeddedBackend(settings.model_repository)


@pytest.fixture(scope="module")
def studies(tmp_path_factory, settings) -> list:
    """One small mammography exam and one small LDCT series, written as DICOM and assembled the
    way `oncostream run` does."""
    from ingest.assembly import Assembler
    from ingest.decode import parse_instance, route
    from ingest.directory import DirectorySource
    from oncostream.synth.command import write_studies

    path = Path(tmp_path_factory.mktemp("triton-studies"))
    write_studies(path, mammo=1, ldct=1, seed=SEED, size="small")
    assembler = Assembler(settings)
    assembled = []
    for message in DirectorySource(path):
        ds = parse_instance(message.data, max_bytes=settings.max_instance_bytes)
        assembled += assembler.add(ds, modality=route(ds))
    assembled += assembler.flush_all()
    assert sorted(s.modality for s in assembled) == ["CT", "MG"]
    return assembled


def _assert_raw_equal(served, reference) -> None:
    for field in reference.__dataclass_fields__:
        want, got = getattr(reference, field), getattr(served, field)
        if not isinstance(want, np.ndarray):  # the operating point, from the same detector contract
            assert got == want, field
            continue
        assert got.shape == want.shape, field
        assert got.dtype == np.float32, field
        if want.size:
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=field)


def _assert_close(got, want, path="event") -> None:
    """Recursive equality with floats within TOLERANCE."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            _assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=TOLERANCE), path
    else:
        assert got == want, path


def test_every_model_is_served_and_matches_its_card(triton_server, triton_grpc):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_grpc)
    try:
        repository = Settings().model_repository
        for name in model_names():
            assert client.is_model_ready(name), name
            metadata = client.get_model_metadata(name, as_json=True)
            assert metadata_differences(metadata, load_contract(name, repository)) == [], name
    finally:
        client.close()


def test_ldct_ensemble_equals_embedded(triton, embedded):
    from oncostream.synth.ldct import make_ldct_phantom

    # a clearly detectable nodule, so that masks and probabilities of real candidates are compared
    phantom = make_ldct_phantom(SEED, size="small",
                                nodules=[{"diameter_mm": 14.0, "composition": "solid", "margin": "lobulated"}])
    spacing = np.asarray(phantom.spacing_mm, np.float32)
    reference = embedded.infer_ldct(phantom.hu_low, spacing)
    served = triton.infer_ldct(phantom.hu_low, spacing)
    assert isinstance(served, LdctRaw)
    assert reference.candidates.shape[0] > 0, "compare at least one candidate's mask and probabilities"
    _assert_raw_equal(served, reference)


def _canonical_views(phantom) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The phantom's views with their canonical frames, as the served path sends them."""
    from ingest.mammo import canonical_views
    from ingest.preprocess.mammo import frame_vector
    from oncostream.synth.mammo import mammo_datasets

    images, frames = canonical_views(mammo_datasets(phantom))
    return images, [frame_vector(f) for f in frames], [f.mask for f in frames]


def test_mammo_ensemble_equals_embedded(triton, embedded):
    from oncostream.synth.mammo import make_mammo_phantom

    images, frames, masks = _canonical_views(make_mammo_phantom(SEED, size="small"))
    reference = embedded.infer_mammo(images, frames, masks)
    served = triton.infer_mammo(images, frames, masks)
    assert isinstance(served, MammoRaw)
    _assert_raw_equal(served, reference)
    # views of different sizes go in separate requests and come back in the caller's order
    mixed = [images[0], images[1][: images[1].shape[0] // 2 * 2, :], images[2][:-8, :-8]]
    reference = embedded.infer_mammo(mixed, frames[:3], masks[:3])
    _assert_raw_equal(triton.infer_mammo(mixed, frames[:3], masks[:3]), reference)


def test_same_findings_and_triage_as_embedded(settings, triton, embedded, studies):
    from oncostream.app.pipeline import Pipeline

    volatile = {"triaged_at"}
    findings = 0
    for study in studies:
        want = Pipeline(settings, embedded).process(study).event.model_dump(mode="json", exclude=volatile)
        got = Pipeline(settings, triton).process(study).event.model_dump(mode="json", exclude=volatile)
        assert got["priority"] == want["priority"], study.modality
        _assert_close(got, want, study.modality)
        findings += len(got["findings"])
    # the first LDCT models find no nodule on small phantoms yet; the mammography exam does, and the
    # raw-output tests above compare every LDCT candidate
    assert findings > 0, "the comparison should cover at least one finding"


def test_model_versions_are_the_served_ones(triton, embedded):
    assert triton.model_versions() == embedded.model_versions()
    assert set(triton.model_versions()) == set(MODEL_NAMES)
    # the served version directory plus the digest of the weights Triton reports it serves
    assert triton.model_versions() == {n: load_contract(n).release for n in MODEL_NAMES}


@pytest.mark.parametrize("mode", ["system", "none"])
def test_shared_memory_and_plain_grpc_agree(triton_grpc, triton, mode):
    import tritonclient.grpc as grpcclient

    from oncostream.synth.ldct import make_ldct_phantom

    phantom = make_ldct_phantom(SEED + 1, size="small")
    spacing = np.asarray(phantom.spacing_mm, np.float32)
    backend = TritonBackend(Settings(triton_url=triton_grpc, triton_shared_memory=mode))
    client = grpcclient.InferenceServerClient(triton_grpc)
    try:
        assert backend.uses_shared_memory == (mode == "system")
        prefix = backend.shared_memory_prefix
        assert (prefix is not None) == (mode == "system")
        raw = backend.infer_ldct(phantom.hu_low, spacing)
        if prefix is not None:
            regions = client.get_system_shared_memory_status(as_json=True).get("regions", {})
            assert [r for r in regions if r.startswith(prefix)], "the series went through a registered region"
    finally:
        backend.close()
    if prefix is not None:
        regions = client.get_system_shared_memory_status(as_json=True).get("regions", {})
        assert not [r for r in regions if r.startswith(prefix)], "close() unregisters the region"
    client.close()
    _assert_raw_equal(raw, triton.infer_ldct(phantom.hu_low, spacing))


def test_triton_metrics_count_inferences(triton_server, triton):
    from oncostream.synth.mammo import make_mammo_phantom

    triton.infer_mammo(*_canonical_views(make_mammo_phantom(SEED + 2, size="small")))
    text = requests.get(triton_server.extra["metrics_url"], timeout=10).text
    success = {m.group(1): float(m.group(2)) for m in
               re.finditer(r'^nv_inference_request_success\{model="([^"]+)",version="1"\} (\S+)$', text, re.M)}
    assert success.get("mammo_screening", 0) >= 1
    assert success.get("mammo_classifier", 0) >= 1
    assert "nv_inference_compute_infer_duration_us" in text


def test_contract_mismatch_is_reported_at_start_up(tmp_path, triton_grpc):
    source = Settings().model_repository
    changed = tmp_path / "repository"
    shutil.copytree(source, changed, ignore=shutil.ignore_patterns("*.onnx"))
    card = yaml.safe_load((changed / "ldct_screening" / "contract.yaml").read_text())
    card["outputs"][0]["name"] = "nodules"
    (changed / "ldct_screening" / "contract.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ContractMismatch, match="nodules") as error:
        TritonBackend(Settings(triton_url=triton_grpc, model_repository=changed))
    assert error.value.model == "ldct_screening"


def test_weights_other_than_the_contracts_are_refused_at_start_up(tmp_path, triton_grpc):
    """A client whose contract names other weights than the server loaded (a retrained repository
    not yet deployed, or the reverse) must not report results under the contract's version."""
    changed = tmp_path / "repository"
    shutil.copytree(Settings().model_repository, changed, ignore=shutil.ignore_patterns("*.onnx"))
    path = changed / "ldct_nodule_segmenter" / "contract.yaml"
    card = yaml.safe_load(path.read_text())
    card["weights_sha256"] = "0" * 64
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(ContractMismatch, match="served weights") as error:
        TritonBackend(Settings(triton_url=triton_grpc, model_repository=changed))
    assert error.value.model == "ldct_nodule_segmenter"


def test_unreachable_server_is_backend_unavailable():
    with pytest.raises(BackendUnavailable) as error:
        TritonBackend(Settings(triton_url=f"127.0.0.1:{free_port()}"), ready_timeout_s=1.0)
    assert error.value.retry_after > 0


def test_server_going_away_is_backend_unavailable(tmp_path, triton_repository):
    """A second server on the same repository, stopped under a connected backend: the call is
    retried with backoff, then BackendUnavailable tells the worker to pause, not to fail the study."""
    from oncostream.services import triton as triton_service

    service = triton_service.start(tmp_path / "work", triton_repository)
    try:
        backend = TritonBackend(Settings(triton_url=service.env["TRITON_GRPC"], triton_timeout_s=20))
    finally:
        service.stop()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as error:
        backend.infer_ldct(np.full((8, 32, 32), -1000, np.float32), np.array([2.5, 1.0, 1.0], np.float32))
    assert error.value.retry_after > 0
    assert time.monotonic() - started >= 3.0, "three retries with backoff 0.5, 1 and 2 s come first"
    backend.close()


def test_invalid_request_fails_alone(triton):
    with pytest.raises(TritonInferenceError, match="volume_hu"):
        triton.infer_ldct(np.zeros((4, 4), np.float32), np.array([2.5, 1.0, 1.0], np.float32))
    assert triton.infer_ldct(np.full((8, 32, 32), -1000, np.float32),
                             np.array([2.5, 1.0, 1.0], np.float32)).candidates.shape[1] == 5
