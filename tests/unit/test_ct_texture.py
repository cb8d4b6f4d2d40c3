"""CT kernel harmonisation (ingest/canonical/ct_texture.py): a series' noise texture is measured from
its pixels and brought to the models' training texture; within the tolerated range nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ingest.canonical import ct_texture
from oncostream.synth.vendors import kernel_filter

PIXEL_MM = 0.7


def _soft_tissue(texture_mm: float, noise_hu: float = 20.0, seed: int = 3) -> np.ndarray:
    """8 slices of 40 HU soft tissue with independent per-slice noise of a Gaussian texture."""
    white = np.random.default_rng(seed).standard_normal((8, 256, 256)).astype(np.float32)
    noise = ndimage.gaussian_filter(white, (0.0, texture_mm / PIXEL_MM, texture_mm / PIXEL_MM))
    return (40.0 + noise / noise.std() * noise_hu).astype(np.float32)


@pytest.fixture(scope="module")
def training_like() -> np.ndarray:
    volume = _soft_tissue(0.7)
    texture = ct_texture.measure(volume, PIXEL_MM)
    assert ct_texture.TOLERATED[0] <= texture.band_ratio <= ct_texture.TOLERATED[1], texture.describe()
    return volume


def test_a_series_with_the_training_texture_is_left_alone(training_like):
    harmonised, texture = ct_texture.harmonise(training_like, PIXEL_MM)
    assert harmonised is training_like and not texture.changed and texture.review_reason() is None


@pytest.mark.parametrize("kernel_mm, direction", [(0.6, "smooth_sigma_mm"), (-0.8, "sharpen_sigma_mm")])
def test_a_sharper_or_smoother_kernel_is_brought_to_the_training_texture(training_like, kernel_mm, direction):
    other_kernel = kernel_filter(training_like, PIXEL_MM, kernel_mm)
    harmonised, texture = ct_texture.harmonise(other_kernel, PIXEL_MM)
    assert not ct_texture.TOLERATED[0] <= texture.band_ratio <= ct_texture.TOLERATED[1]
    assert getattr(texture, direction) > 0 and texture.review_reason() is None
    after = ct_texture.measure(harmonised, PIXEL_MM)
    assert not after.changed and abs(after.band_ratio - ct_texture.TARGET) < 0.02
    # the filter undoes most of the other kernel: the voxels come back near the training-like ones
    residual = np.abs(harmonised - training_like).mean()
    assert residual < 0.5 * np.abs(other_kernel - training_like).mean()


def test_the_ratio_depends_on_the_texture_not_the_noise_level_or_the_anatomy(training_like):
    base = ct_texture.measure(training_like, PIXEL_MM).band_ratio
    y = np.linspace(-1.0, 1.0, training_like.shape[1], dtype=np.float32)[None, :, None]
    noisier_with_anatomy = 40.0 + (training_like - 40.0) * 2.5 + 60.0 * y  # more dose-noise, a gradient
    assert ct_texture.measure(noisier_with_anatomy, PIXEL_MM).band_ratio == pytest.approx(base, rel=0.02)


def test_unmeasurable_series_are_left_alone(training_like):
    coarse = ct_texture.measure(training_like, 2.65)  # small phantoms: no 0.20-0.35 cycles/mm at all
    air = ct_texture.measure(np.full((8, 256, 256), -1000.0, np.float32), PIXEL_MM)  # no soft tissue
    single = ct_texture.measure(training_like[:1], PIXEL_MM)
    noiseless = ct_texture.measure(np.full((8, 256, 256), 40.0, np.float32), PIXEL_MM)
    for texture in (coarse, air, single, noiseless):
        assert texture.band_ratio is None and not texture.changed and texture.review_reason() is None


def test_a_texture_no_filter_can_correct_asks_for_a_reader():
    harmonised, texture = ct_texture.harmonise(_soft_tissue(2.5), PIXEL_MM)
    assert texture.out_of_range and texture.changed
    assert "noise texture outside what the models were validated on" in texture.review_reason()


def test_padding_below_air_does_not_ring_into_the_body(training_like):
    padded = kernel_filter(training_like, PIXEL_MM, 0.6)
    padded[:, :, :20] = -3024.0  # Pixel Padding Value outside the reconstruction circle
    harmonised, texture = ct_texture.harmonise(padded, PIXEL_MM)
    assert texture.changed and harmonised.min() >= -1024.0 - 1e-3


def test_an_uncorrectable_texture_reaches_the_triage_event_as_a_review_reason(monkeypatch):
    """The served path end to end: a series whose texture no filter brings into range is still read,
    and its event asks for a reader with the reason (the measurement is forced here: the small
    phantoms' 2.65 mm pixels are too coarse to measure, and no re-expression produces such a texture)."""
    from datetime import datetime, timezone

    from ingest.backends.embedded import EmbeddedBackend
    from ingest.ldct import infer_ldct_study
    from oncostream.settings import Settings
    from oncostream.study import Study
    from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
    from postprocess.results import build_result

    uncorrectable = ct_texture.Texture(band_ratio=1.62, tiles=120, smooth_sigma_mm=2.0, out_of_range=True)
    monkeypatch.setattr(ct_texture, "measure", lambda volume_hu, pixel_mm: uncorrectable)
    datasets = ldct_datasets(make_ldct_phantom(5, size="small"))
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    study = Study(study_instance_uid=str(datasets[0].StudyInstanceUID), modality="CT", datasets=datasets,
                  arrived_at=at)
    inference = infer_ldct_study(EmbeddedBackend(), study)
    event = build_result(study, inference, Settings(), now=at).event
    assert event.needs_human_review
    assert any("noise texture outside what the models were validated on" in r for r in event.review_reasons)
