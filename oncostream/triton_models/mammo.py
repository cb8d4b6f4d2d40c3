"""`mammo_screening` steps of the CPU realisation: ingest/preprocess/mammo.py's DALI definition and
ingest/steps/mammo.py's functions, unchanged."""

from __future__ import annotations

import numpy as np

from ingest.steps import mammo
from oncostream.triton_models.base import StepModel


class MammoPreprocess(StepModel):
    """Batch of views + canonical frames -> [V, 512, 416, 1], the layout the DALI backend realisation writes."""

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = list(np.asarray(inputs["image"], np.float32))
        frames = list(np.asarray(inputs["frame"], np.float32))
        masks = list(np.asarray(inputs["mask"], np.uint8))
        batch = mammo.preprocess(images, frames, masks)  # [V, 1, H, W]
        return {"preprocessed": np.moveaxis(batch, 1, -1)}


class MammoTestTimeAugmentation(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image": mammo.augment(np.moveaxis(inputs["preprocessed"], -1, 1))}


class MammoMerge(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        malignancy, heatmaps, density, uncertainty = mammo.merge_augmented(
            inputs["malignancy"], inputs["heatmap"], inputs["density"])
        return {"malignancy": malignancy, "heatmaps": heatmaps, "density": density, "uncertainty": uncertainty}
