"""A network of the CPU realisation: the committed ONNX (next to this entry point, in the model's
version folder) in ONNX Runtime, exactly as the embedded backend runs it."""

from __future__ import annotations

import numpy as np

from oncostream.model_contract import cpu_session
from oncostream.triton_models.base import StepModel


class OnnxNetwork(StepModel):
    def setup(self, args: dict) -> None:
        # as EmbeddedBackend: the default thread pool, no CPU memory arena
        self._session = cpu_session(self.model_dir / self.version / "model.onnx")
        self._output_names = [o.name for o in self._session.get_outputs()]

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, values))
