"""Mammography steps: DALI preprocessing vs. its numpy twin, TTA merge, orientation, regions, the
committed models against their contracts, and one phantom exam through the embedded backend."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import onnxruntime as ort
import pytest

from ingest.mammo import exam_probability, heatmap_regions, infer_mammo_study
from ingest.preprocess.mammo import MODEL_SHAPE, needs_flip, preprocess_view_reference, preprocess_views
from ingest.steps import mammo as steps
from oncostream.model_contract import load_contract, onnx_path
from oncostream.study import Study

VIEW_SHAPES = {
    "small-same-size": ((512, 416), 4095.0, "L"),
    "full-4x-down": ((2048, 1664), 16383.0, "R"),
    "odd-down": ((1000, 777), 8191.0, "R"),
    "up": ((300, 200), 4095.0, "L"),
}


def _image(shape: tuple[int, int], max_value: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, int(max_value) + 1, size=shape).astype(np.float32)
    image[shape[0] // 4: shape[0] // 2, : shape[1] // 3] = max_value  # structure, not only noise
    return image


@pytest.mark.parametrize("case", list(VIEW_SHAPES), ids=list(VIEW_SHAPES))
def test_dali_preprocessing_equals_numpy_reference(case):
    shape, max_value, laterality = VIEW_SHAPES[case]
    image = _image(shape, max_value, seed=len(case))
    served = preprocess_views([image], [laterality], [max_value])
    assert served.shape == (1, 1, *MODEL_SHAPE) and served.dtype == np.float32
    reference = preprocess_view_reference(image, max_value, laterality)
    np.testing.assert_allclose(served[0, 0], reference, atol=5e-5)  # DALI accumulates in float32; < one 14-bit step


@pytest.mark.parametrize("laterality,chest_wall_left", [("L", True), ("R", False)], ids=["left", "right"])
def test_laterality_flip_puts_chest_wall_on_the_left(laterality, chest_wall_left):
    # A view whose tissue (bright) sits on the image's left half, as an L view of the synth phantoms.
    image = np.zeros((512, 416), np.float32)
    image[:, :208] = 4095.0
    out = preprocess_views([image if chest_wall_left else image[:, ::-1]], [laterality], [4095.0])[0, 0]
    assert needs_flip(laterality) is (laterality == "R")
    assert out[:, :200].min() == pytest.approx(1.0) and out[:, 216:].max() == pytest.approx(0.0)


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


def test_heatmaps_return_to_each_views_orientation():
    heatmaps = np.zeros((2, 32, 26), np.float32)
    heatmaps[:, 5, 0] = 1.0  # next to the chest wall in model orientation
    out = steps.to_view_orientation(heatmaps, ["L", "R"])
    assert out[0, 5, 0] == 1.0 and out[1, 5, 25] == 1.0


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
