"""Embedded backend (the default): the DALI preprocessing definitions on the CPU and the committed
ONNX models in ONNX Runtime, in-process. The step logic lives in ingest/steps/ and is shared
with Triton's CPU python-backend models, so both realisations compute the same thing."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np

from ingest.backends.base import InferenceBackend, LdctRaw, MammoRaw
from oncostream.errors import BackendUnavailable, ContractMismatch
from oncostream.model_contract import MODEL_NAMES, cpu_session, load_contract, onnx_path, weights_problem
from oncostream.settings import DEFAULT_MODEL_REPOSITORY


class EmbeddedBackend(InferenceBackend):
    name = "embedded"

    def __init__(self, repository: Path = DEFAULT_MODEL_REPOSITORY, intra_op_threads: int = 0):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable(f"embedded backend needs onnxruntime: {exc}") from exc
        self._repository = repository
        self._contracts = {n: load_contract(n, repository) for n in MODEL_NAMES}
        self._sessions = {}
        for name in MODEL_NAMES:
            path = onnx_path(name, repository)
            problem = weights_problem(self._contracts[name], path)
            if problem is not None:
                raise ContractMismatch(name, [problem])
            session = cpu_session(path, intra_op_threads)
            _check_against_contract(session, self._contracts[name])
            self._sessions[name] = session
        # sessions are thread-safe: with ONNX Runtime's default pool (every core per run) the runs of
        # studies processing at once go one at a time, so they do not oversubscribe the cores; with a
        # fixed thread count per run (settings.ort_threads) they run side by side
        self._lock = threading.Lock() if intra_op_threads == 0 else contextlib.nullcontext()

    def run_model(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[name]
        outputs = [o.name for o in session.get_outputs()]
        with self._lock:
            values = session.run(outputs, feeds)
        return dict(zip(outputs, values))

    def infer_ldct(self, volume_hu: np.ndarray, spacing_mm: np.ndarray, *, overwrite: bool = False) -> LdctRaw:
        from ingest.steps import ldct

        return ldct.run(volume_hu, spacing_mm, self.run_model,
                        ldct.detection_threshold(self._contracts["ldct_nodule_detector"]), overwrite=overwrite)

    def infer_mammo(self, images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> MammoRaw:
        from ingest.steps import mammo

        return mammo.run(images, frames, masks, self.run_model)

    def model_versions(self) -> dict[str, str]:
        return {n: c.release for n, c in self._contracts.items()}


def _check_against_contract(session, contract) -> None:
    differences = []
    for kind, actual, declared in (("input", session.get_inputs(), contract.inputs),
                                   ("output", session.get_outputs(), contract.outputs)):
        actual_by_name = {t.name: t for t in actual}
        for spec in declared:
            tensor = actual_by_name.get(spec.name)
            if tensor is None:
                differences.append(f"{kind} {spec.name!r} missing (model has {sorted(actual_by_name)})")
                continue
            rank = len(tensor.shape)
            if rank != len(spec.shape):
                differences.append(f"{kind} {spec.name!r} has rank {rank}, card says {len(spec.shape)}")
    if differences:
        raise ContractMismatch(contract.name, differences)
