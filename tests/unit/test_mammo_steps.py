"""Mammography steps: DALI preprocessing vs. its numpy twin, TTA merge, heatmaps back onto the view,
regions, the committed models against their contracts, and one phantom exam through the embedded
backend."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import onnxruntime as ort
import pytest

from ingest.canonical.mammo import MammoFrame
from ingest.mammo import exam_probability, heatmap_in_view, heatmap_regions, infer_mammo_study
from ingest.preprocess.mammo import MODEL_SHAPE, frame_vector, preprocess_view_reference, preprocess_views
from ingest.steps import mammo as steps
from oncostream.model_contract import load_contract, onnx_path
from oncostream.study import Study

# (shape, max value, flip_rows, flip_cols, roi as fractions of the image, MONOCHROME1)
VIEW_CASES = {
    "small-same-size": ((512, 416), 4095.0, False, False, (0.0, 0.0, 1.0, 1.0), False),
    "full-4x-down-mirrored": ((2048, 1664), 16383.0, False, True, (0.0, 0.0, 1.0, 1.0), False),
    "odd-down-upside-down-inverted": ((1000, 777), 8191.0, True, False, (0.1, 0.0, 0.9, 0.8), True),
    "roi-past-the-edges": ((1200, 900), 65535.0, True, True, (-0.2, 0.0, 1.1, 1.3), False),
    "up": ((300, 200), 4095.0, False, False, (0.0, 0.0, 1.0, 1.0), False),
}


def _image(shape: tuple[int, int], max_value: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, int(max_value) + 1, size=shape).astype(np.float32)
    image[shape[0] // 4: shape[0] // 2, : shape[1] // 3] = max_value  # structure, not only noise
    return image


def _frame(shape, max_value, flip_rows, flip_cols, roi, inverted, seed) -> MammoFrame:
    mask = np.zeros(MODEL_SHAPE, np.uint8)
    mask[:, : MODEL_SHAPE[1] * 2 // 3] = 1
    mask[np.random.default_rng(seed).random(MODEL_SHAPE) < 0.05] = 0
    gain, offset = (-1.0 / max_value, 1.0) if inverted else (1.0 / max_value, 0.0)
    return MammoFrame(gain=gain, offset=offset, flip_rows=flip_rows, flip_cols=flip_cols,
                      roi=(roi[0] * shape[0], roi[1] * shape[1], roi[2] * shape[0], roi[3] * shape[1]),
                      mask=mask, source_shape=shape, orientation_source="PatientOrientation")


@pytest.mark.parametrize("case", list(VIEW_CASES), ids=list(VIEW_CASES))
def test_dali_preprocessing_equals_numpy_reference(case):
    shape, max_value, *rest = VIEW_CASES[case]
    image = _image(shape, max_value, seed=len(case))
    frame = _frame(shape, max_value, *rest, seed=len(case))
    served = preprocess_views([image], [frame_vector(frame)], [frame.mask])
    assert served.shape == (1, 1, *MODEL_SHAPE) and served.dtype == np.float32
    reference = preprocess_view_reference(image, frame)
    np.testing.assert_allclose(served[0, 0], reference, atol=5e-5)  # DALI accumulates in float32; < one 14-bit step


def test_the_frame_mirrors_inverts_and_masks():
    # tissue (bright in MONOCHROME2) on the image's right half: a view stored with the chest wall right
    image = np.zeros((512, 416), np.float32)
    image[:, 208:] = 4095.0
    frame = _frame((512, 416), 4095.0, False, True, (0.0, 0.0, 1.0, 1.0), True, seed=1)
    out = preprocess_views([4095.0 - image], [frame_vector(frame)], [np.ones(MODEL_SHAPE, np.uint8)])[0, 0]
    assert out[:, :200].min() == pytest.approx(1.0) and out[:, 216:].max() == pytest.approx(0.0)
    masked = preprocess_views([4095.0 - image], [frame_vector(frame)], [np.zeros(MODEL_SHAPE, np.uint8)])[0, 0]
    assert np.allclose(masked, 0.03), "outside the breast the model sees the canonical background"


def test_merge_augmented_undoes_the_mirror_and_measures_spread():
    rng = np.random.default_rng(3)
    heatmap = rng.random((2, 1, 32, 26)).astype(np.float32)
    mirrored = np.concatenate([heatmap, heatmap[:, :, ::-1, :]])
    density = np.tile(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), (4, 1))
    malignancy = np.array([[0.2], [0.6], [0.4], [0.6]], np.float32)
    p, maps, dens, spread = steps.merge_augmented(malignancy, mirrored, density)
    np.testing.assert_allclose(p, [0.3, 0.6], atol=1e-6)
    np.testing.assert_allclose(spread, [0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(maps, heatmap[:, 0], atol=1e-6)
    np.testing.assert_allclose(dens.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("flip_cols", [False, True], ids=["chest-wall-left", "chest-wall-right"])
def test_heatmaps_return_to_each_views_own_pixel_grid(flip_cols):
    heatmap = np.zeros((32, 26), np.float32)
    heatmap[5, 0] = 1.0  # next to the chest wall in the canonical frame
    # a 0.1 mm view whose canonical field starts 200 rows above the image (the breast sits low)
    frame = MammoFrame(gain=1.0, offset=0.0, flip_rows=False, flip_cols=flip_cols, roi=(-200.0, 0.0, 1848.0, 1664.0),
                       mask=np.ones(MODEL_SHAPE, np.uint8), source_shape=(2048, 1664),
                       orientation_source="PatientOrientation")
    in_view = heatmap_in_view(heatmap, frame)
    assert in_view.shape == (32, 26)
    row, col = np.unravel_index(int(np.argmax(in_view)), in_view.shape)
    assert col == (25 if flip_cols else 0)
    # canonical cell 5 spans model rows 80-96 = source rows 120-184 after the 200-row offset: view cell 2
    assert row == 2
    assert in_view[-1].max() == 0.0, "below the canonical field nothing is reported"


@pytest.mark.parametrize("image_shape", [(512, 416), (2048, 1664)], ids=["small", "full"])
def test_heatmap_region_maps_cells_to_image_pixels(image_shape):
    heatmap = np.zeros((32, 26), np.float32)
    heatmap[10, 20] = 0.9
    heatmap[10, 21] = 0.6
    heatmap[30, 2] = 0.4  # below threshold
    regions = heatmap_regions(heatmap, image_shape, threshold=0.5)
    assert len(regions) == 1
    kind, centre, bbox, score = regions[0]
    cell_r, cell_c = image_shape[0] / 32, image_shape[1] / 26
    assert kind == "region" and score == pytest.approx(0.9)
    assert bbox == (int(10 * cell_r), int(20 * cell_c), int(11 * cell_r), int(22 * cell_c))
    assert bbox[0] <= centre[0] < bbox[2] and bbox[1] <= centre[1] < bbox[3]


def test_exam_probability_follows_the_most_suspicious_breast():
    calibration = {"exam_weight_breast_mean": 1.0, "exam_weight_view_max": 1.0, "exam_bias": -1.0}
    lateralities = ["L", "L", "R", "R"]
    low = exam_probability([0.05, 0.05, 0.05, 0.05], lateralities, calibration)
    high = exam_probability([0.05, 0.05, 0.9, 0.8], lateralities, calibration)
    assert 0.0 < low < high < 1.0


@pytest.mark.parametrize("name", ["mammo_classifier", "mammo_density"])
def test_committed_model_matches_its_contract(name):
    contract = load_contract(name)
    session = ort.InferenceSession(str(onnx_path(name)), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i.name for i in contract.inputs]
    for batch in (1, 3):
        outputs = session.run(None, {"image": np.full((batch, 1, *MODEL_SHAPE), 0.3, np.float32)})
        for value, spec in zip(outputs, contract.outputs):
            assert value.shape == (batch, *spec.shape[1:])
            assert np.all((value >= 0) & (value <= 1))
    if name == "mammo_classifier":
        edges = [contract.calibration[f"exam_score_edge_{k}"] for k in range(1, 10)]
        assert edges == sorted(edges)


def test_phantom_exam_through_the_embedded_backend():
    from ingest.backends.embedded import EmbeddedBackend
    from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets

    phantom = make_mammo_phantom(7, size="small", malignant=True)
    datasets = mammo_datasets(phantom)
    study = Study(study_instance_uid=phantom.truth.study_instance_uid, modality="MG", datasets=datasets,
                  arrived_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    backend = EmbeddedBackend()
    try:
        first = infer_mammo_study(backend, study)
        again = infer_mammo_study(backend, study)
    finally:
        backend.close()
    assert {v.sop_instance_uid for v in first.views} == {str(ds.SOPInstanceUID) for ds in datasets}
    assert 0.0 <= first.exam_malignancy_probability <= 1.0 and first.uncertainty >= 0.0
    assert sum(first.density_probabilities) == pytest.approx(1.0, abs=1e-5)
    assert set(first.model_versions) == {"mammo_classifier", "mammo_density"}
    for view, ds in zip(first.views, datasets):
        assert view.heatmap.shape == (32, 26)
        for kind, centre, bbox, score in view.regions:
            assert kind in ("mass", "calcification", "region") and 0.0 <= score <= 1.0
            assert 0 <= bbox[0] <= centre[0] < bbox[2] <= ds.Rows and 0 <= bbox[1] <= centre[1] < bbox[3] <= ds.Columns
    assert first.exam_malignancy_probability == again.exam_malignancy_probability  # deterministic
