"""`ldct_screening` steps of the CPU realisation (python on the GPU target too): ingest/steps/ldct.py's
functions, unchanged, with the networks reached through BLS in the same batches as the embedded
backend uses (a series needs loops over slices and candidates, which an ensemble graph cannot say)."""

from __future__ import annotations

import numpy as np

from ingest.steps import ldct
from oncostream.model_contract import load_contract
from oncostream.triton_models.base import StepModel


class LdctDenoiseSeries(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"denoised_hu": ldct.denoise(np.asarray(inputs["volume_hu"], np.float32), self.run_network)}


class LdctDetectCandidates(StepModel):
    def setup(self, args: dict) -> None:
        self.threshold = ldct.detection_threshold(load_contract("ldct_nodule_detector", self.repository))

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        heatmap, diameter, grid = ldct.detect(inputs["denoised_hu"], np.asarray(inputs["spacing_mm"], np.float32),
                                              self.run_network)
        return {"candidates": ldct.series_candidates(heatmap, diameter, grid, self.threshold)}


class LdctCharacteriseNodules(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        masks, malignancy, composition, uncertainty = ldct.segment(
            inputs["denoised_hu"], np.asarray(inputs["spacing_mm"], np.float32), inputs["candidates"],
            self.run_network)
        return {"masks": masks, "malignancy": malignancy, "composition": composition, "uncertainty": uncertainty}
