"""Python-backend model used by test_triton_service.py: reports which numpy and which project the
stub imported, and doubles its input."""

from __future__ import annotations

import numpy as np

import ingest
from oncostream.triton_models.base import StepModel


class Probe(StepModel):
    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"numpy_version": np.array([np.__version__.encode()], dtype=object),
                "ingest_file": np.array([ingest.__file__.encode()], dtype=object),
                "y": inputs["x"] * 2}
