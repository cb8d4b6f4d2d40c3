"""LDCT steps: DALI preprocessing equals its numpy realisation (the training path), candidate
extraction, DICOM geometry, mask measurements, and one small phantom through the committed models."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.backends.base import LdctRaw
from ingest.ldct import SeriesGeometry, lookback_from_raw, mask_measurements, nodules_from_raw, series_volume_hu
from ingest.preprocess import ldct as pre
from ingest.steps import ldct as steps
from oncostream.settings import DEFAULT_MODEL_REPOSITORY
from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom

SPACINGS = {
    "full-like": np.array([1.25, 0.7, 0.7], np.float32),
    "small-like": np.array([2.5, 2.65, 2.65], np.float32),
    "anisotropic": np.array([3.0, 0.9, 1.1], np.float32),
}


@pytest.fixture(scope="module")
def random_volume() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((40, 96, 112)) * 400.0 - 500.0).astype(np.float32)


@pytest.fixture(scope="module")
def small_phantom():
    return make_ldct_phantom(4242, size="small", nodules=[{"diameter_mm": 12.0, "composition": "solid"}])


@pytest.mark.parametrize("spacing", SPACINGS.values(), ids=SPACINGS.keys())
def test_detector_input_dali_equals_numpy(random_volume, spacing):
    served, grid = pre.detector_input(random_volume, spacing)
    trained, grid_ref = pre.detector_input_reference(random_volume, spacing)
    assert served.shape == trained.shape == grid.shape
    assert all(n % pre.DETECTOR_STRIDE == 0 for n in served.shape)
    np.testing.assert_allclose(served, trained, atol=1e-4)
    assert served.min() >= -1.0 and served.max() <= 1.0


CENTRES = {
    "inside": [20.0, 48.0, 56.0],
    "fractional": [10.3, 31.7, 80.2],
    "at-corner": [0.0, 0.0, 0.0],
    "past-edge": [39.0, 95.0, 111.0],
}


@pytest.mark.parametrize("centre", CENTRES.values(), ids=CENTRES.keys())
@pytest.mark.parametrize("spacing", SPACINGS.values(), ids=SPACINGS.keys())
def test_patches_dali_equal_numpy(random_volume, spacing, centre):
    centres = np.array([centre, [15.0, 40.0, 40.0]])
    served = pre.nodule_patches(random_volume, spacing, centres)
    trained = pre.patches_reference(random_volume, spacing, centres)
    assert served.shape == (2, 48, 48, 48)
    np.testing.assert_allclose(served, trained, atol=1e-4)


def test_denoise_input_dali_equals_numpy(random_volume):
    np.testing.assert_array_equal(pre.denoise_input(random_volume), pre.denoise_input_reference(random_volume))


def test_patch_index_mapping_round_trips():
    spacing = SPACINGS["anisotropic"]
    centre = np.array([12.3, 40.1, 50.9])
    patch_index = np.array([[0, 0, 0], [23.5, 23.5, 23.5], [47, 10, 3]], float)
    source = pre.patch_to_source_index(patch_index, centre, spacing)
    np.testing.assert_allclose(source[1], centre)
    np.testing.assert_allclose(pre.source_to_patch_index(source, centre, spacing), patch_index)


def test_patch_is_centred_on_the_requested_voxel():
    """A single bright voxel at the centre index lands between patch voxels 23 and 24 (1 mm grid)."""
    volume = np.full((30, 30, 30), -1000.0, np.float32)
    volume[15, 15, 15] = 600.0
    patch = pre.patches_reference(volume, np.ones(3), np.array([[15.0, 15.0, 15.0]]))[0]
    peak = np.unravel_index(np.argmax(patch), patch.shape)
    assert all(p in (23, 24) for p in peak)


def test_extract_candidates_finds_peaks_in_source_voxels():
    spacing = np.array([1.25, 0.7, 0.7])
    grid = pre.detector_grid((64, 128, 128), spacing)
    heatmap = np.zeros(grid.shape, np.float32)
    diameter = np.zeros(grid.shape, np.float32)
    heatmap[10, 20, 30], diameter[10, 20, 30] = 0.9, 8.0
    heatmap[30, 10, 5], diameter[30, 10, 5] = 0.5, 12.0
    heatmap[30, 11, 5] = 0.4  # a shoulder of the second peak, not a candidate
    heatmap[5, 5, 5] = 0.05  # below the threshold
    candidates = steps.extract_candidates(heatmap, diameter, grid, threshold=0.1)
    assert candidates.shape == (2, 5)
    np.testing.assert_allclose(candidates[:, 4], [0.9, 0.5])
    np.testing.assert_allclose(candidates[:, 3], [8.0, 12.0])
    # 2 mm grid voxel j sits at source index (j + 0.5) * 2 mm / spacing - 0.5
    np.testing.assert_allclose(candidates[0, :3], (np.array([10, 20, 30]) + 0.5) * 2.0 / spacing - 0.5, rtol=1e-5)


def test_series_candidates_keep_look_back_peaks_below_the_operating_point():
    spacing = np.array([1.25, 0.7, 0.7])
    grid = pre.detector_grid((64, 128, 128), spacing)
    heatmap = np.zeros(grid.shape, np.float32)
    diameter = np.zeros(grid.shape, np.float32)
    heatmap[10, 20, 30] = 0.9  # reported
    heatmap[30, 10, 5] = 0.35  # reported: at the operating point counts as above
    heatmap[20, 40, 40] = 0.2  # look-back
    heatmap[5, 5, 5] = steps.LOOKBACK_FLOOR  # look-back: the floor is included
    heatmap[25, 5, 40] = 0.05  # below the floor: nothing
    candidates = steps.series_candidates(heatmap, diameter, grid, threshold=0.35)
    np.testing.assert_allclose(candidates[:, 4], [0.9, 0.35, 0.2, steps.LOOKBACK_FLOOR])
    # at most MAX_LOOKBACK_CANDIDATES below the operating point, the highest
    many = np.zeros(grid.shape, np.float32)
    for k in range(steps.MAX_LOOKBACK_CANDIDATES + 5):
        many[2 + 3 * (k // 8), 4 + 6 * (k % 8), 4] = 0.11 + 0.01 * k
    below = steps.series_candidates(many, diameter, grid, threshold=0.5)
    assert len(below) == steps.MAX_LOOKBACK_CANDIDATES
    assert below[-1, 4] == pytest.approx(0.11 + 0.01 * 5) and np.all(np.diff(below[:, 4]) <= 0)


def test_extract_candidates_on_an_empty_heatmap():
    grid = pre.detector_grid((16, 32, 32), np.ones(3))
    out = steps.extract_candidates(np.zeros(grid.shape, np.float32), np.zeros(grid.shape, np.float32), grid, 0.1)
    assert out.shape == (0, 5)


def test_series_geometry_matches_the_phantom(small_phantom):
    datasets = ldct_datasets(small_phantom)
    geometry = SeriesGeometry.from_datasets(datasets)
    np.testing.assert_allclose(geometry.spacing_mm, small_phantom.spacing_mm, rtol=1e-5)
    volume = series_volume_hu(datasets)
    np.testing.assert_allclose(volume, np.clip(np.rint(small_phantom.hu_low), -1024, 3071))
    index = np.array([3.0, 10.5, 20.25])
    ox, oy, oz = small_phantom.origin_mm
    dz, dy, dx = small_phantom.spacing_mm
    expected = [ox + index[2] * dx, oy + index[1] * dy, oz + index[0] * dz]
    np.testing.assert_allclose(geometry.to_patient_mm(index), expected, atol=1e-4)


def _sphere(radius_mm: float, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    p = np.indices((48, 48, 48)).astype(float) - 23.5
    for axis, o in enumerate(offset):
        p[axis] -= o
    return (np.sqrt((p ** 2).sum(0)) <= radius_mm).astype(np.float32)


def _partial_volume_sphere(radius_mm: float, supersample: int = 4) -> np.ndarray:
    """Occupancy of each 1 mm voxel by a sphere centred on the patch centre (what a soft mask estimates)."""
    fine = (np.arange(48 * supersample) + 0.5) / supersample - 24.0
    inside = (fine[:, None, None] ** 2 + fine[None, :, None] ** 2 + fine[None, None, :] ** 2) <= radius_mm ** 2
    return inside.reshape(48, supersample, 48, supersample, 48, supersample).mean(axis=(1, 3, 5)).astype(np.float32)


@pytest.mark.parametrize("diameter", [6.0, 10.0, 20.0], ids=["6mm", "10mm", "20mm"])
def test_mask_measurements_of_a_sphere(diameter):
    occupancy = _partial_volume_sphere(diameter / 2)
    measures = mask_measurements(occupancy >= 0.5, occupancy)
    true_volume = np.pi / 6 * diameter ** 3
    assert abs(measures["volume_mm3"] - true_volume) / true_volume < 0.03
    assert abs(measures["mean_diameter_mm"] - diameter) < 1.0
    assert abs(measures["long_axis_mm"] - diameter) < 1.5
    np.testing.assert_allclose(measures["centroid"], [23.5] * 3, atol=0.01)


def test_nodules_from_raw_geometry_and_empty_masks(small_phantom):
    datasets = ldct_datasets(small_phantom)
    geometry = SeriesGeometry.from_datasets(datasets)
    shape = small_phantom.hu_low.shape
    centre = np.array([24.0, 64.0, 60.0])
    masks = np.stack([_sphere(6.0, offset=(2.0, 0.0, 0.0)), np.zeros((48, 48, 48), np.float32),
                      _sphere(6.0, offset=(2.0, 0.0, 0.0))])
    raw = LdctRaw(candidates=np.array([[*centre, 12.0, 0.9], [10.0, 10.0, 10.0, 6.0, 0.8],
                                       [*(centre + [0.0, 0.5, 0.0]), 12.0, 0.7]], np.float32),
                  masks=masks, malignancy=np.array([0.7, 0.2, 0.6], np.float32),
                  composition=np.array([[0.1, 0.7, 0.1, 0.1], [1, 0, 0, 0], [1, 0, 0, 0]], np.float32),
                  uncertainty=np.array([0.05, 0.0, 0.0], np.float32), operating_point=0.5)
    nodules = nodules_from_raw(raw, geometry, shape)
    assert len(nodules) == 1  # the empty mask is dropped, the third is a duplicate of the first
    nodule = nodules[0]
    expected_index = centre + np.array([2.0 / small_phantom.spacing_mm[0], 0.0, 0.0])
    np.testing.assert_allclose(nodule.center_mm, geometry.to_patient_mm(expected_index), atol=0.05)
    assert nodule.composition == "part_solid"
    assert nodule.malignancy_probability == pytest.approx(0.7)
    assert abs(nodule.mean_diameter_mm - 12.0) < 1.0
    assert nodule.mask.shape == shape
    voxel_mm3 = float(np.prod(small_phantom.spacing_mm))
    assert abs(nodule.mask.values.sum() * voxel_mm3 - nodule.volume_mm3) / nodule.volume_mm3 < 0.35
    assert lookback_from_raw(raw, geometry, nodules) == []  # every candidate is above the operating point


def test_candidates_below_the_operating_point_are_look_back_never_nodules(small_phantom):
    geometry = SeriesGeometry.from_datasets(ldct_datasets(small_phantom))
    shape = small_phantom.hu_low.shape
    centre = np.array([24.0, 64.0, 60.0])
    elsewhere = np.array([12.0, 30.0, 90.0])
    raw = LdctRaw(candidates=np.array([[*centre, 12.0, 0.9],
                                       [*elsewhere, 5.0, 0.3],  # look-back
                                       [*(centre + [0.0, 0.5, 0.0]), 12.0, 0.25],  # the reported nodule again
                                       [10.0, 10.0, 10.0, 6.0, 0.2]], np.float32),  # empty mask
                  masks=np.stack([_sphere(6.0), _sphere(2.5), _sphere(6.0), np.zeros((48, 48, 48), np.float32)]),
                  malignancy=np.full(4, 0.3, np.float32), composition=np.tile([[1, 0, 0, 0]], (4, 1)).astype(np.float32),
                  uncertainty=np.zeros(4, np.float32), operating_point=0.34)
    nodules = nodules_from_raw(raw, geometry, shape)
    assert [n.detection_score for n in nodules] == [pytest.approx(0.9)]
    (seen,) = lookback_from_raw(raw, geometry, nodules)
    np.testing.assert_allclose(seen.center_mm, geometry.to_patient_mm(elsewhere), atol=0.6)
    assert seen.detection_score == pytest.approx(0.3) and abs(seen.mean_diameter_mm - 5.0) < 1.0
    assert seen.volume_mm3 > 0


def test_small_phantom_through_the_committed_models(small_phantom):
    from oncostream.evaluation.ldct import LdctModels

    models = LdctModels(DEFAULT_MODEL_REPOSITORY)
    raw = steps.run(small_phantom.hu_low, np.asarray(small_phantom.spacing_mm, np.float32), models, models.threshold)
    k = len(raw.candidates)
    assert raw.candidates.shape == (k, 5) and k <= steps.MAX_SERIES_CANDIDATES
    assert raw.operating_point == models.threshold
    assert np.sum(raw.candidates[:, 4] < models.threshold) <= steps.MAX_LOOKBACK_CANDIDATES
    assert np.all(raw.candidates[:, 4] >= steps.LOOKBACK_FLOOR)
    assert raw.masks.shape == (k, 48, 48, 48)
    assert raw.malignancy.shape == raw.uncertainty.shape == (k,)
    assert raw.composition.shape == (k, 4)
    assert np.all((raw.malignancy >= 0) & (raw.malignancy <= 1))
    np.testing.assert_allclose(raw.composition.sum(axis=1), 1.0, atol=1e-4)
    # the 12 mm solid nodule is found: some candidate's centre lies within 6 mm of it
    truth = np.array(small_phantom.truth.nodules[0].center_mm)
    ox, oy, oz = small_phantom.origin_mm
    dz, dy, dx = small_phantom.spacing_mm
    found = [np.array([ox + c[2] * dx, oy + c[1] * dy, oz + c[0] * dz]) for c in raw.candidates]
    assert any(np.linalg.norm(f - truth) <= 6.0 for f in found)


@pytest.mark.parametrize("plane", [(128, 160), (97, 121)], ids=["even", "odd"])
def test_denoising_the_body_box_gives_the_whole_plane_answer_inside_the_body(plane):
    """The denoiser reads only the body's box widened by its reach: with a stand-in model of the same
    kind (a local filter, zero padding like a convolution, reach 9 pixels), every body pixel comes out
    as denoising the whole plane gives it, and the air outside the box is returned as it came."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    volume = np.full((10, *plane), -1000.0, np.float32) + rng.normal(0, 30, (10, *plane)).astype(np.float32)
    volume[:, 40:80, 50:100] = rng.normal(40, 30, (10, 40, 50))  # the body, off-centre
    volume[3, 36:40, 60:64] = 100.0  # one slice reaches further: the box is the union over slices

    def local_filter(name, feeds):
        image = feeds["image"]
        assert image.shape[-2] % 2 == 0 and image.shape[-1] % 2 == 0, "the denoiser needs even edges"
        out = image
        for _ in range(9):
            out = ndimage.uniform_filter(out, size=(1, 1, 3, 3), mode="constant")
        return {"denoised": out}

    rows, cols = steps.body_box(volume)
    assert rows.start <= 36 - steps.DENOISE_MARGIN + 1 and cols.stop >= min(plane[1], 100 + steps.DENOISE_MARGIN)
    boxed = steps.denoise(volume, local_filter)
    original = steps.body_box
    try:
        steps.body_box = lambda v: (slice(0, v.shape[1]), slice(0, v.shape[2]))
        whole = steps.denoise(volume, local_filter)
    finally:
        steps.body_box = original
    body = volume > steps.BODY_HU
    np.testing.assert_allclose(boxed[body], whole[body], atol=1e-3)
    outside = np.ones(volume.shape, bool)
    outside[:, rows, cols] = False
    np.testing.assert_allclose(boxed[outside], np.clip(volume, -1024, 3071)[outside], atol=1e-3)


def test_denoising_holds_one_batch_of_slices_beside_the_series(monkeypatch):
    """Preprocessing and the denoiser see one batch of slices at a time, never the whole series (a
    full-size series is 170 MB as float32; a copy of it per step is what the working set was made of),
    and the batches together cover every slice once."""
    volume = np.full((steps.DENOISE_BATCH * 2 + 3, 64, 64), 40.0, np.float32)
    seen_by_dali, seen_by_model = [], []
    real = pre.denoise_input

    def spied(batch):
        seen_by_dali.append(batch.shape[0])
        return real(batch)

    def model(name, feeds):
        seen_by_model.append(feeds["image"].shape[0])
        return {"denoised": feeds["image"] * np.float32(0.5)}

    monkeypatch.setattr(pre, "denoise_input", spied)
    out = steps.denoise(volume, model)
    assert max(seen_by_dali) <= steps.DENOISE_BATCH and sum(seen_by_dali) == len(volume)
    assert seen_by_model == seen_by_dali
    np.testing.assert_allclose(out, 20.0, atol=1e-4)


def test_a_slice_of_another_size_is_a_clear_series_error(small_phantom):
    from ingest.ldct import SeriesGeometryError

    datasets = ldct_datasets(small_phantom)[:3]
    odd = datasets[2]
    odd.PixelData = odd.pixel_array[:-1].tobytes()
    odd.Rows = odd.Rows - 1
    with pytest.raises(SeriesGeometryError, match="slice 2 is"):
        series_volume_hu(datasets)


def test_denoising_in_place_gives_the_same_answer(random_volume):
    """``overwrite``: the series handed over is denoised into its own memory, with the same result."""

    def model(name, feeds):
        from scipy import ndimage

        return {"denoised": ndimage.uniform_filter(feeds["image"], size=(1, 1, 5, 5), mode="constant")}

    expected = steps.denoise(random_volume, model)
    handed_over = random_volume.copy()
    out = steps.denoise(handed_over, model, overwrite=True)
    assert out is handed_over
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("trial", range(40))
def test_local_maxima_are_scipys_maximum_filter_peaks(trial):
    """Candidate peaks are checked only where the score reaches the threshold: the same voxels as the
    whole-grid maximum filter (mode "constant"), ties and grid edges included."""
    from scipy import ndimage

    rng = np.random.default_rng(trial)
    shape = tuple(int(n) for n in rng.integers(1, 24, 3))
    heatmap = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0, 2)).astype(np.float32)
    if trial % 4 == 0:
        heatmap = np.round(heatmap, 1)  # plateaus: equal neighbours are all peaks
    threshold = float(rng.uniform(0, 0.8))
    size = steps.PEAK_NEIGHBOURHOOD
    expected = np.argwhere((heatmap == ndimage.maximum_filter(heatmap, size=size, mode="constant"))
                           & (heatmap >= threshold))
    np.testing.assert_array_equal(steps.local_maxima(heatmap, threshold), expected)


def test_a_series_gives_the_same_answer_with_its_batches_side_by_side(small_phantom):
    """One thread per model run with the series' batches run side by side (the embedded default) gives
    exactly what every core per run, one run at a time, gives: same candidates, masks and scores."""
    from ingest.backends.embedded import EmbeddedBackend

    spacing = np.asarray(small_phantom.spacing_mm, np.float32)
    side_by_side, one_at_a_time = EmbeddedBackend(intra_op_threads=1), EmbeddedBackend(intra_op_threads=0)
    try:
        assert one_at_a_time.slots == 1
        a = side_by_side.infer_ldct(small_phantom.hu_low.copy(), spacing)
        b = one_at_a_time.infer_ldct(small_phantom.hu_low.copy(), spacing)
    finally:
        side_by_side.close()
        one_at_a_time.close()
    assert len(a.candidates) > 0
    for field in ("candidates", "masks", "malignancy", "composition", "uncertainty"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-6, err_msg=field)


def test_run_all_waits_for_every_task_and_raises_the_first_failure():
    """A failing batch does not leave the others writing after the series has been given up: every task
    has finished when run_all raises."""
    import threading

    from ingest.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(intra_op_threads=1)
    release, finished = threading.Event(), []

    def slow():
        release.wait(timeout=30)
        finished.append("slow")

    def failing():
        release.set()
        raise RuntimeError("batch 2 failed")

    try:
        if backend.slots < 2:
            pytest.skip("one core: the tasks run in order, the failure stops the rest before they start")
        with pytest.raises(RuntimeError, match="batch 2 failed"):
            backend.run_all([slow, failing])
        assert finished == ["slow"]
    finally:
        backend.close()
