"""`mammo_screening` steps of the CPU realisation: ingest/preprocess/mammo.py's DALI definition and
ingest/steps/mammo.py's functions, unchanged."""

from __future__ import annotations

import numpy as np

from ingest.steps import mammo
from oncostream.triton_models.base import StepModel


def _lateralities(flip: np.ndarray) -> list[str]:
    # ingest/preprocess/mammo.py mirrors exactly the right-breast views
    return ["R" if f else "L" for f in np.asarray(flip).reshape(-1)]


class MammoPreprocess(StepModel):
    """Batch of views -> [V, 512, 416, 1], the layout the DALI backend realisation writes."""

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = list(np.asarray(inputs["image"], np.float32))
        # float32(1 / (1 / s)) == s for every float32 s, so the DALI feed sees the client's scale
        max_values = [1.0 / float(s) for s in np.asarray(inputs["scale"], np.float32).reshape(-1)]
        batch = mammo.preprocess(images, _lateralities(inputs["flip"]), max_values)  # [V, 1, H, W]
        return {"preprocessed": np.moveaxis(batch, 1, -1)}


class MammoTestTimeAugmentation(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image": mammo.augment(np.moveaxis(inputs["preprocessed"], -1, 1))}


class MammoMerge(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        malignancy, heatmaps, density, uncertainty = mammo.merge_augmented(
            inputs["malignancy"], inputs["heatmap"], inputs["density"])
        return {"malignancy": malignancy, "heatmaps": mammo.to_view_orientation(heatmaps, _lateralities(inputs["flip"])),
                "density": density, "uncertainty": uncertainty}
