"""The declarative source of each model: `model_repository/<model>/contract.yaml`.

Both realisations (embedded ONNX Runtime, Triton cpu/tensorrt) and the model card are checked
against it; dims of -1 are dynamic.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from oncostream.settings import DEFAULT_MODEL_REPOSITORY

# Triton model-config parameter that carries a network's weights_sha256 (oncostream.model_build)
WEIGHTS_PARAMETER = "weights_sha256"
MODEL_NAMES = ("ldct_denoise", "ldct_nodule_detector", "ldct_nodule_segmenter", "mammo_classifier", "mammo_density")
# calibration every contract of that model must carry, each a probability in (0, 1): the detector's
# operating point is fitted with its weights (training/ldct_train.py calibrate_served), so a replaced
# detector brings its own
REQUIRED_CALIBRATION = {"ldct_nodule_detector": ("detection_threshold",)}


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
    # networks: sha256 of <version>/model.onnx, written by the training export (record_weights)
    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _required_calibration(self) -> ModelContract:
        for key in REQUIRED_CALIBRATION.get(self.name, ()):
            value = self.calibration.get(key)
            if value is None or not 0.0 < value < 1.0:
                raise ValueError(f"{self.name}: calibration.{key} must be a probability in (0, 1), got {value!r}")
        return self

    @property
    def release(self) -> str:
        """The version reported with every result (SR algorithm version, SEG software version, the
        model fingerprint in output UIDs): the Triton version plus a digest of the weights, of the
        calibration applied after the model and of the preprocessing that feeds it. Retrained weights,
        a refitted calibration or a changed input convention under the same version directory
        therefore never reuse the outputs' UIDs for different content."""
        if self.weights_sha256 is None:
            return self.version
        calibration = json.dumps(self.calibration, sort_keys=True)
        digest = hashlib.sha256(
            f"{self.weights_sha256}\x1f{calibration}\x1f{self.preprocessing or ''}".encode()).hexdigest()
        return f"{self.version}+{digest[:12]}"


# contract.yaml path -> (its text when parsed, the contract): every study reads its model's calibration,
# and parsing and validating the YAML cost ~20 ms a time (0.2 s per 10 studies, perf/RESULTS.md), reading
# the few KiB of text microseconds; a rewritten file (record_calibration, a new export) is parsed again
_PARSED: dict[Path, tuple[str, ModelContract]] = {}


def load_contract(name: str, repository: Path = DEFAULT_MODEL_REPOSITORY) -> ModelContract:
    path = repository / name / "contract.yaml"
    text = path.read_text()
    parsed = _PARSED.get(path)
    if parsed is not None and parsed[0] == text:
        return parsed[1]
    contract = ModelContract.model_validate(yaml.safe_load(text))
    _PARSED[path] = (text, contract)
    return contract


def onnx_path(name: str, repository: Path = DEFAULT_MODEL_REPOSITORY) -> Path:
    contract = load_contract(name, repository)
    return repository / name / contract.version / "model.onnx"


def cpu_session(path: Path, intra_op_threads: int = 0):
    """An ONNX Runtime CPU session as every served path opens one: the default thread pool (0: the
    host's physical cores) and no CPU memory arena. The arena keeps the largest activations any call
    ever needed (a full-size LDCT denoiser batch) for the life of the process, ~0.4 GB per worker
    measured (perf/RESULTS.md); without it each call returns its memory, at no measured cost in time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_problem(contract: ModelContract, path: Path) -> str | None:
    """Why the weights at ``path`` are not the ones ``contract`` names, or None when they are."""
    if contract.weights_sha256 is None:
        return f"{contract.name}: contract.yaml names no weights_sha256 (run the training export)"
    actual = file_sha256(path)
    if actual != contract.weights_sha256:
        return (f"{contract.name}: {path} has sha256 {actual[:12]}..., contract.yaml names "
                f"{contract.weights_sha256[:12]}... (weights replaced without re-recording them)")
    return None


def record_calibration(name: str, calibration: dict[str, float], repository: Path = DEFAULT_MODEL_REPOSITORY) -> None:
    """Replace the ``calibration`` block of the model's contract.yaml (the rest is kept as written)."""
    path = repository / name / "contract.yaml"
    block = yaml.safe_dump({"calibration": {k: float(v) for k, v in calibration.items()}}, sort_keys=False)
    text, replaced = re.subn(r"^calibration:.*\n(?:[ \t]+.*\n)*", block, path.read_text(), flags=re.M)
    path.write_text(text if replaced else text.rstrip("\n") + "\n" + block)
    load_contract(name, repository)  # still valid


def record_weights(name: str, repository: Path = DEFAULT_MODEL_REPOSITORY) -> str:
    """Write the sha256 of the network's model.onnx into its contract.yaml (replacing an earlier
    one; the rest of the file is kept as written). Every export that writes a model.onnx calls it."""
    path = repository / name / "contract.yaml"
    digest = file_sha256(onnx_path(name, repository))
    line = f'weights_sha256: "{digest}"'
    text, replaced = re.subn(r"^weights_sha256:.*$", line, path.read_text(), flags=re.M)
    path.write_text(text if replaced else text.rstrip("\n") + "\n" + line + "\n")
    load_contract(name, repository)  # still valid
    return digest
