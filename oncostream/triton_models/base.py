"""The shape every oncostream python-backend model shares: named numpy tensors in and out, one
request failing alone (its error goes back on its own response), networks reached through BLS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from oncostream.model_contract import load_contract

_NUMPY_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT16": np.int16,
                 "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_UINT8": np.uint8, "TYPE_BOOL": np.bool_,
                 "TYPE_STRING": np.object_}


class StepModel:
    """Subclasses implement `compute(inputs) -> outputs` on dicts of numpy arrays named as in config."""

    def initialize(self, args: dict) -> None:
        self.model_config = json.loads(args["model_config"])
        self.model_dir = Path(args["model_repository"])
        self.version = args["model_version"]
        self.repository = self.model_dir.parent
        self._inputs = [i["name"] for i in self.model_config["input"]]
        self._outputs = {o["name"]: _NUMPY_DTYPES[o["data_type"]] for o in self.model_config["output"]}
        self._network_outputs: dict[str, list[str]] = {}
        self.setup(args)

    def setup(self, args: dict) -> None:
        """Per-instance start-up (sessions, pipelines); runs once when Triton loads the instance."""

    def compute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise TypeError(f"{type(self).__name__} does not define compute()")

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self._inputs}
                outputs = self.compute(inputs)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(outputs[name], dtype))
                           for name, dtype in self._outputs.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - one request fails alone, with its reason
                error = pb_utils.TritonError(f"{self.model_config['name']}: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

    def run_network(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run_model` of ingest/steps over BLS: runs network `name` in this same server."""
        outputs = self._network_outputs.get(name)
        if outputs is None:
            outputs = [o.name for o in load_contract(name, self.repository).outputs]
            self._network_outputs[name] = outputs
        request = pb_utils.InferenceRequest(
            model_name=name, requested_output_names=outputs,
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{name}: {response.error().message()}")
        return {o: pb_utils.get_output_tensor_by_name(response, o).as_numpy() for o in outputs}

    def finalize(self) -> None:
        """Nothing to release beyond what the process exit releases."""
