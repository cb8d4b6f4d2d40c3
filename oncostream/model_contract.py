"""The declarative source of each model: `model_repository/<model>/contract.yaml`.

Both realisations (embedded ONNX Runtime, Triton cpu/tensorrt) and the model card are checked
against it; dims of -1 are dynamic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from oncostream.settings import DEFAULT_MODEL_REPOSITORY

MODEL_NAMES = ("ldct_denoise", "ldct_nodule_detector", "ldct_nodule_segmenter", "mammo_classifier", "mammo_density")


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    dtype: Literal["FP32", "FP16", "INT16", "INT32", "INT64", "UINT8", "BOOL"]
    shape: list[int]  # including the batch axis first; -1 = dynamic
    description: str = ""


class ModelContract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    version: str
    task: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: str
    max_batch_size: int = Field(ge=0, default=8)
    calibration: dict[str, float] = Field(default_factory=dict)


def load_contract(name: str, repository: Path = DEFAULT_MODEL_REPOSITORY) -> ModelContract:
    path = repository / name / "contract.yaml"
    return ModelContract.model_validate(yaml.safe_load(path.read_text()))


def onnx_path(name: str, repository: Path = DEFAULT_MODEL_REPOSITORY) -> Path:
    contract = load_contract(name, repository)
    return repository / name / contract.version / "model.onnx"
