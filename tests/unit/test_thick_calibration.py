"""The segmenter's malignancy recalibration for thick slices (ingest/ldct.py thick_slice_malignancy):
applied to series thicker than the thin-section limit only, composed on refit, kept in the contract."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import numpy as np
import pytest
from scipy.special import expit, logit

from ingest.canonical.ldct import THIN_SERIES_MM
from ingest.ldct import THICK_BIAS, THICK_SCALE, thick_slice_malignancy
from oncostream.model_contract import load_contract, record_calibration
from oncostream.settings import Settings
from training.thick_calibration import compose

CALIBRATION = {THICK_SCALE: 0.7, THICK_BIAS: -0.4}
P = np.array([0.02, 0.3, 0.5, 0.9], np.float32)


def test_thin_series_and_contracts_without_the_keys_keep_the_served_probability():
    assert thick_slice_malignancy(P, THIN_SERIES_MM, CALIBRATION) is P
    assert thick_slice_malignancy(P, 1.0, CALIBRATION) is P
    assert thick_slice_malignancy(P, 2.5, {}) is P


def test_thick_series_are_platt_recalibrated():
    out = thick_slice_malignancy(P, 2.5, CALIBRATION)
    np.testing.assert_allclose(out, expit(0.7 * logit(P.astype(np.float64)) - 0.4), rtol=1e-6)
    assert out.dtype == np.float32 and np.all(np.diff(out) > 0), "an order-keeping map"


def test_a_refit_composes_with_the_recalibration_already_served():
    refit = (1.3, 0.2)
    composed = compose(refit, CALIBRATION)
    served = thick_slice_malignancy(P, 2.5, CALIBRATION)
    twice = expit(refit[0] * logit(served.astype(np.float64)) + refit[1])
    np.testing.assert_allclose(thick_slice_malignancy(P, 2.5, composed), twice, rtol=1e-5)
    assert compose((1.0, 0.0), {}) == {THICK_SCALE: 1.0, THICK_BIAS: 0.0}


def test_recording_the_calibration_keeps_the_rest_of_the_contract_as_written(tmp_path):
    source = Settings().model_repository / "ldct_nodule_segmenter"
    shutil.copytree(source, tmp_path / "ldct_nodule_segmenter")
    before = (source / "contract.yaml").read_text()
    record_calibration("ldct_nodule_segmenter", CALIBRATION, tmp_path)
    record_calibration("ldct_nodule_segmenter", {}, tmp_path)
    record_calibration("ldct_nodule_segmenter", CALIBRATION, tmp_path)
    after = (tmp_path / "ldct_nodule_segmenter" / "contract.yaml").read_text()
    assert load_contract("ldct_nodule_segmenter", tmp_path).calibration == CALIBRATION
    without = [line for line in after.splitlines() if not line.startswith(("calibration:", "  thick_slice"))]
    assert without == [line for line in before.splitlines() if not line.startswith(("calibration:", "  thick_slice"))]


@pytest.fixture(scope="module")
def thick_study():
    from ingest.assembly import sort_ct_series
    from oncostream.study import Study
    from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
    from oncostream.synth.vendors import CT_PROFILES

    datasets, _ = sort_ct_series(CT_PROFILES["thick_2.5mm"](ldct_datasets(make_ldct_phantom(3, size="small"))), None)
    return Study(study_instance_uid=str(datasets[0].StudyInstanceUID), modality="CT", datasets=datasets,
                 arrived_at=datetime.now(timezone.utc))


def test_the_served_path_reports_the_recalibrated_probability_of_a_thick_series(tmp_path, thick_study):
    from ingest.backends.embedded import EmbeddedBackend
    from ingest.ldct import infer_ldct_study

    repository = tmp_path / "model_repository"
    shutil.copytree(Settings().model_repository, repository)
    record_calibration("ldct_nodule_segmenter", {}, repository)
    plain_backend = EmbeddedBackend(repository)
    plain, plain_release = infer_ldct_study(plain_backend, thick_study), plain_backend.model_versions()["ldct_nodule_segmenter"]
    record_calibration("ldct_nodule_segmenter", CALIBRATION, repository)
    backend = EmbeddedBackend(repository)
    recalibrated = infer_ldct_study(backend, thick_study)

    assert plain.nodules, "the phantom has a nodule to report"
    assert [n.center_mm for n in recalibrated.nodules] == [n.center_mm for n in plain.nodules]
    expected = thick_slice_malignancy(np.array([n.malignancy_probability for n in plain.nodules], np.float32),
                                      THIN_SERIES_MM + 1.0, CALIBRATION)
    np.testing.assert_allclose([n.malignancy_probability for n in recalibrated.nodules], expected, rtol=1e-5)
    assert any("mm thick (thin-section limit" in r for r in recalibrated.review_reasons), recalibrated.review_reasons
    # a refitted recalibration is a new release: new output UIDs
    assert backend.model_versions()["ldct_nodule_segmenter"] != plain_release


def test_the_harmonisation_maps_the_thick_read_onto_the_thin_read_of_the_same_nodules():
    from training.thick_calibration import fit_harmonisation

    rng = np.random.default_rng(7)
    thin = expit(rng.normal(-0.3, 1.6, 600))
    thick = expit((logit(thin) - 0.25) / 0.8)  # thick slices read each nodule flatter and lower
    a, b = fit_harmonisation(thick, thin)
    assert a == pytest.approx(0.8, abs=0.02) and b == pytest.approx(0.25, abs=0.02)
    harmonised = thick_slice_malignancy(thick.astype(np.float32), 2.5, {THICK_SCALE: a, THICK_BIAS: b})
    assert np.abs(harmonised - thin).max() < 0.01
    assert fit_harmonisation(thin, thin) == pytest.approx((1.0, 0.0), abs=1e-3), "the same reads: left as they are"
