"""InferenceBackend: the one interface the pipeline calls; embedded (ONNX Runtime in-process) and
Triton (gRPC ensembles) both implement it and return the same raw tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

PATCH_SIZE = 48  # segmenter patch edge, voxels of 1 mm


@dataclass
class LdctRaw:
    """What the `ldct_screening` ensemble returns for one series (K candidates)."""

    candidates: np.ndarray  # float32 [K, 5]: z, y, x (voxel index in the input volume), diameter_mm, detection score
    masks: np.ndarray  # float32 [K, 48, 48, 48]: mask probability on the 1 mm patch centred on the candidate
    malignancy: np.ndarray  # float32 [K]: calibrated probability
    composition: np.ndarray  # float32 [K, 4]: solid, part_solid, ground_glass, calcified
    uncertainty: np.ndarray  # float32 [K]: flip test-time-augmentation spread of the malignancy probability
    # not a tensor: the detector's operating point (its contract's calibration.detection_threshold). The
    # candidates scoring below it are look-back candidates (ingest/steps/ldct.py series_candidates): kept
    # for a later round's comparison, never reported
    operating_point: float


@dataclass
class MammoRaw:
    """What the `mammo_screening` ensemble returns for V views (in the order given)."""

    malignancy: np.ndarray  # float32 [V]: calibrated per-view probability
    heatmaps: np.ndarray  # float32 [V, h, w] in [0, 1], in each view's canonical frame (ingest/canonical/mammo.py)
    density: np.ndarray  # float32 [V, 4]: a, b, c, d
    uncertainty: np.ndarray  # float32 [V]


class InferenceBackend(ABC):
    """Turns pixel arrays into raw model outputs. Errors: BackendUnavailable when it cannot serve now."""

    name: str

    @abstractmethod
    def infer_ldct(self, volume_hu: np.ndarray, spacing_mm: np.ndarray, *, overwrite: bool = False) -> LdctRaw:
        """volume_hu: float32 [D, H, W] in HU, slices sorted inferior to superior; spacing_mm: float32 [3] (z, y, x).
        ``overwrite``: the caller hands the volume over and never reads it again, so the backend may
        reuse its memory (the embedded backend denoises into it: one full-size volume fewer per series)."""

    @abstractmethod
    def infer_mammo(self, images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> MammoRaw:
        """images: float32 [H, W] per view (raw stored values); frames: float32 [8] per view and masks:
        uint8 [512, 416] per view, the canonical frame (ingest/preprocess/mammo.py frame_vector)."""

    @abstractmethod
    def model_versions(self) -> dict[str, str]:
        """Model name -> version of every model this backend serves."""

    @abstractmethod
    def calibration(self, name: str) -> dict[str, float]:
        """The ``calibration`` of model ``name``'s contract: what the caller applies after the model
        (ingest/ldct.py thick_slice_malignancy), part of the model's release."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, connections and shared memory."""
