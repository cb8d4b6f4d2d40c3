"""Embedded backend (the default): the DALI preprocessing definitions on the CPU and the committed
ONNX models in ONNX Runtime, in-process. The step logic lives in ingest/steps/ and is shared
with Triton's CPU python-backend models, so both realisations compute the same thing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from ingest.backends.base import InferenceBackend, LdctRaw, MammoRaw
from ingest.preprocess import ldct as preprocess_ldct
from ingest.preprocess import mammo as preprocess_mammo
from oncostream.cpus import usable_cores
from oncostream.errors import BackendUnavailable, ContractMismatch
from oncostream.model_contract import MODEL_NAMES, cpu_session, load_contract, onnx_path, weights_problem
from oncostream.settings import DEFAULT_MODEL_REPOSITORY


class EmbeddedBackend(InferenceBackend):
    name = "embedded"

    def __init__(self, repository: Path = DEFAULT_MODEL_REPOSITORY, intra_op_threads: int = 1):
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
        # the preprocessing pipelines are built now, not on the first study (its latency)
        preprocess_ldct.warm_up()
        preprocess_mammo.warm_up()
        # Model slots: how many runs go at once. Sessions are thread-safe; with ONNX Runtime's default
        # pool (0: every core per run) one run at a time, so they do not oversubscribe the cores; with N
        # threads per run, cores // N runs side by side: the runs of the studies processing at once, and
        # the independent batches of one series (run_all), which keeps the cores busy when one study is
        # processing (perf/RESULTS.md measures both settings)
        cores = usable_cores()  # a container's CPU limit counts, not only the node's cores
        self.slots = 1 if intra_op_threads == 0 else max(1, cores // intra_op_threads)
        self._slots = threading.BoundedSemaphore(self.slots)
        self._tasks = ThreadPoolExecutor(self.slots, thread_name_prefix="model") if self.slots > 1 else None

    def run_model(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[name]
        outputs = [o.name for o in session.get_outputs()]
        with self._slots:
            values = session.run(outputs, feeds)
        return dict(zip(outputs, values))

    def run_all(self, tasks: list[Callable[[], None]]) -> None:
        """Run independent tasks (steps' model batches) on the model slots; return when every one has
        finished (none is left writing after a failure), raising the first failure."""
        if self._tasks is None or len(tasks) < 2:
            for task in tasks:
                task()
            return
        futures = [self._tasks.submit(task) for task in tasks]
        wait(futures)
        for future in futures:
            future.result()

    def infer_ldct(self, volume_hu: np.ndarray, spacing_mm: np.ndarray, *, overwrite: bool = False) -> LdctRaw:
        from ingest.steps import ldct

        return ldct.run(volume_hu, spacing_mm, self.run_model,
                        ldct.detection_threshold(self._contracts["ldct_nodule_detector"]), overwrite=overwrite,
                        run_all=self.run_all)

    def infer_mammo(self, images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> MammoRaw:
        from ingest.steps import mammo

        return mammo.run(images, frames, masks, self.run_model)

    def model_versions(self) -> dict[str, str]:
        return {n: c.release for n, c in self._contracts.items()}

    def close(self) -> None:
        if self._tasks is not None:
            self._tasks.shutdown(wait=True)

    def calibration(self, name: str) -> dict[str, float]:
        return dict(self._contracts[name].calibration)


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
