"""Mammography steps between the models, as pure numpy functions.

The embedded backend composes them in ``run``; Triton's CPU python-backend models of the
``mammo_screening`` ensemble call the same functions, so both realisations compute the same thing.

Flow: preprocess (DALI) -> test-time augmentation batch (each view and its up-down mirror) ->
``mammo_classifier`` + ``mammo_density`` -> merge the augmentations (mean; the spread is the
uncertainty) -> heatmaps back into each view's own orientation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ingest.backends.base import MammoRaw
from ingest.preprocess.mammo import needs_flip, preprocess_views

RunModel = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
CLASSIFIER = "mammo_classifier"
DENSITY = "mammo_density"


def preprocess(images: list[np.ndarray], lateralities: list[str], max_values: list[float]) -> np.ndarray:
    """Views -> float32 [V, 1, 512, 416] model inputs (scaled, chest wall left, resized)."""
    if not (len(images) == len(lateralities) == len(max_values)):
        raise ValueError(f"images, lateralities and max_values differ in length: "
                         f"{len(images)}, {len(lateralities)}, {len(max_values)}")
    return preprocess_views(images, lateralities, max_values)


def augment(batch: np.ndarray) -> np.ndarray:
    """[V, 1, H, W] -> [2V, 1, H, W]: the views, then their up-down mirrors (the left-right axis is
    already normalised by the laterality flip, so up-down is the symmetry left to test)."""
    return np.ascontiguousarray(np.concatenate([batch, batch[:, :, ::-1, :]]), np.float32)


def merge_augmented(malignancy: np.ndarray, heatmap: np.ndarray, density: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs on ``augment``'s batch -> (malignancy [V], heatmap [V, h, w] in model orientation,
    density [V, 4], uncertainty [V]: half the spread of the two malignancy estimates)."""
    views = malignancy.shape[0] // 2
    p = malignancy.reshape(2, views)
    maps = heatmap.reshape(2, views, *heatmap.shape[-2:])
    maps = (maps[0] + maps[1][:, ::-1, :]) / 2
    dens = density.reshape(2, views, -1).mean(axis=0)
    dens = dens / dens.sum(axis=1, keepdims=True)
    return (p.mean(axis=0).astype(np.float32), maps.astype(np.float32), dens.astype(np.float32),
            (np.abs(p[0] - p[1]) / 2).astype(np.float32))


def to_view_orientation(heatmaps: np.ndarray, lateralities: list[str]) -> np.ndarray:
    """Undo the laterality flip so heatmap column j covers the same side as the view's column j."""
    return np.stack([h[:, ::-1] if needs_flip(lat) else h for h, lat in zip(heatmaps, lateralities)]
                    ).astype(np.float32)


def run(images: list[np.ndarray], lateralities: list[str], max_values: list[float], run_model: RunModel) -> MammoRaw:
    """The whole ``mammo_screening`` ensemble for V views (any V >= 1)."""
    batch = augment(preprocess(images, lateralities, max_values))
    classified = run_model(CLASSIFIER, {"image": batch})
    density = run_model(DENSITY, {"image": batch})["density"]
    malignancy, heatmaps, density, uncertainty = merge_augmented(
        classified["malignancy"], classified["heatmap"], density)
    return MammoRaw(malignancy=malignancy, heatmaps=to_view_orientation(heatmaps, lateralities),
                    density=density, uncertainty=uncertainty)
