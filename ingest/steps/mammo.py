"""Mammography steps between the models, as pure numpy functions.

The embedded backend composes them in ``run``; Triton's CPU python-backend models of the
``mammo_screening`` ensemble call the same functions, so both realisations compute the same thing.

Flow: preprocess (DALI; each view's canonical frame from ingest/canonical/mammo.py) -> test-time
augmentation batch (each view and its up-down mirror) -> ``mammo_classifier`` + ``mammo_density`` ->
merge the augmentations (mean; the spread is the uncertainty). Heatmaps stay in the canonical frame;
ingest/mammo.py maps them back onto each view's own pixel grid with the same frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ingest.backends.base import MammoRaw
from ingest.preprocess.mammo import FRAME_LENGTH, MODEL_SHAPE, preprocess_views

RunModel = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
CLASSIFIER = "mammo_classifier"
DENSITY = "mammo_density"


def preprocess(images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Views + frame vectors [8] + breast masks [512, 416] -> float32 [V, 1, 512, 416] model inputs."""
    if not (len(images) == len(frames) == len(masks)):
        raise ValueError(f"images, frames and masks differ in length: {len(images)}, {len(frames)}, {len(masks)}")
    for k, (frame, mask) in enumerate(zip(frames, masks)):
        if np.shape(frame) != (FRAME_LENGTH,) or np.shape(mask) != MODEL_SHAPE:
            raise ValueError(f"view {k}: frame must be [{FRAME_LENGTH}] and mask {list(MODEL_SHAPE)}, got "
                             f"{list(np.shape(frame))} and {list(np.shape(mask))}")
    return preprocess_views(images, frames, masks)


def augment(batch: np.ndarray) -> np.ndarray:
    """[V, 1, H, W] -> [2V, 1, H, W]: the views, then their up-down mirrors (the left-right axis is
    already normalised by the canonical frame (chest wall left), so up-down is the symmetry left to test)."""
    return np.ascontiguousarray(np.concatenate([batch, batch[:, :, ::-1, :]]), np.float32)


def merge_augmented(malignancy: np.ndarray, heatmap: np.ndarray, density: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs on ``augment``'s batch -> (malignancy [V], heatmap [V, h, w] in the canonical frame,
    density [V, 4], uncertainty [V]: half the spread of the two malignancy estimates)."""
    views = malignancy.shape[0] // 2
    p = malignancy.reshape(2, views)
    maps = heatmap.reshape(2, views, *heatmap.shape[-2:])
    maps = (maps[0] + maps[1][:, ::-1, :]) / 2
    dens = density.reshape(2, views, -1).mean(axis=0)
    dens = dens / dens.sum(axis=1, keepdims=True)
    return (p.mean(axis=0).astype(np.float32), maps.astype(np.float32), dens.astype(np.float32),
            (np.abs(p[0] - p[1]) / 2).astype(np.float32))


def run(images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray], run_model: RunModel) -> MammoRaw:
    """The whole ``mammo_screening`` ensemble for V views (any V >= 1)."""
    batch = augment(preprocess(images, frames, masks))
    classified = run_model(CLASSIFIER, {"image": batch})
    density = run_model(DENSITY, {"image": batch})["density"]
    malignancy, heatmaps, density, uncertainty = merge_augmented(
        classified["malignancy"], classified["heatmap"], density)
    return MammoRaw(malignancy=malignancy, heatmaps=heatmaps, density=density, uncertainty=uncertainty)
