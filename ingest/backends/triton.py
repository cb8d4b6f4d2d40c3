"""Triton backend: the `mammo_screening` and `ldct_screening` ensembles over gRPC (tritonclient).

- Start-up: waits (bounded) for the server, then checks every served model's metadata against its
  contract.yaml (names, dtypes, ranks, fixed dims) before the first study: ContractMismatch says
  what differs.
- Large tensors: with the server on this host (`triton_shared_memory` auto + loopback address, or
  system) the input tensors, and the LDCT outputs (bounded by the candidate cap), go through two
  POSIX shared-memory regions registered with the server and reused while big enough; otherwise
  plain gRPC with message limits raised to 2 GiB.
- Timeouts and retries: each call has `triton_timeout_s`; transport failures (server unreachable,
  deadline, model not ready) are retried with exponential backoff, then raise
  BackendUnavailable(retry_after) so the worker pauses consumption instead of failing studies.
  A model error on one request fails that study alone (TritonInferenceError).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time

import numpy as np
from tritonclient.utils import InferenceServerException

from ingest.backends.base import PATCH_SIZE, InferenceBackend, LdctRaw, MammoRaw
from ingest.steps.ldct import MAX_SERIES_CANDIDATES, detection_threshold
from oncostream.errors import BackendUnavailable, ContractMismatch, OncostreamError
from oncostream.model_contract import MODEL_NAMES, WEIGHTS_PARAMETER, ModelContract, load_contract
from oncostream.settings import Settings

log = logging.getLogger(__name__)

MAMMO_ENSEMBLE = "mammo_screening"
LDCT_ENSEMBLE = "ldct_screening"
ENSEMBLES = (MAMMO_ENSEMBLE, LDCT_ENSEMBLE)
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's own ceiling; a full-size LDCT series is ~130 MB
SHARED_MEMORY_MIN_BYTES = 1 << 20  # below this, copying through gRPC costs less than a region write
RETRIES = 3
BACKOFF_S = 0.5
RETRY_AFTER_S = 10.0
# gRPC status codes that mean "the server cannot serve now", not "this request is wrong"
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED")
_LDCT_OUTPUTS = ("candidates", "masks", "malignancy", "composition", "uncertainty")
_MAMMO_OUTPUTS = ("malignancy", "heatmaps", "density", "uncertainty")
# ingest/steps/ldct.py keeps at most MAX_SERIES_CANDIDATES candidates per series (reported and look-back):
# that bounds every output
_LDCT_OUTPUT_BOUNDS = {"candidates": MAX_SERIES_CANDIDATES * 5 * 4,
                       "masks": MAX_SERIES_CANDIDATES * PATCH_SIZE**3 * 4,
                       "malignancy": MAX_SERIES_CANDIDATES * 4, "composition": MAX_SERIES_CANDIDATES * 4 * 4,
                       "uncertainty": MAX_SERIES_CANDIDATES * 4}
_region_ids = itertools.count()
_backend_ids = itertools.count()


class TritonInferenceError(OncostreamError):
    """Triton answered, with an error about this request (bad input, a step failed): fails one study."""


def is_local(url: str) -> bool:
    """Whether HOST:PORT names this host (loopback, or one of this host's own addresses)."""
    host = url.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _transient(exc: Exception) -> bool:
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = str(exc)
    return (any(code in status for code in _TRANSIENT) or "failed to connect" in message.lower()
            or "is not ready" in message or "Socket closed" in message)


class _Region:
    """One system shared-memory region registered with the server, grown on demand and reused."""

    def __init__(self, client, prefix: str):
        self._client = client
        self.prefix = prefix
        self._handle = None
        self._name = ""
        self.byte_size = 0

    def ensure(self, byte_size: int) -> None:
        if self._handle is not None and byte_size <= self.byte_size:
            return
        self.release()
        from tritonclient.utils import shared_memory

        size = max(byte_size, 1 << 24)  # 16 MiB at least, so small series reuse one region
        self._name = f"{self.prefix}_{next(_region_ids)}"
        self._handle = shared_memory.create_shared_memory_region(self._name, f"/{self._name}", size)
        try:
            self._client.register_system_shared_memory(self._name, f"/{self._name}", size)
        except Exception:
            shared_memory.destroy_shared_memory_region(self._handle)
            self._handle = None
            raise
        self.byte_size = size

    def bind_inputs(self, inputs: list, arrays: list[np.ndarray]) -> None:
        """Write `arrays` back to back into the region and point `inputs` at them."""
        from tritonclient.utils import shared_memory

        self.ensure(sum(a.nbytes for a in arrays))
        offset = 0
        for tensor, array in zip(inputs, arrays):
            shared_memory.set_shared_memory_region(self._handle, [array], offset=offset)
            tensor.set_shared_memory(self._name, array.nbytes, offset=offset)
            offset += array.nbytes

    def bind_outputs(self, outputs: list, bounds: list[int]) -> list[int]:
        """Give each requested output `bounds[i]` bytes of the region; returns their offsets."""
        self.ensure(sum(bounds))
        offsets, offset = [], 0
        for output, size in zip(outputs, bounds):
            output.set_shared_memory(self._name, size, offset=offset)
            offsets.append(offset)
            offset += size
        return offsets

    def read(self, datatype: str, shape: list[int], offset: int) -> np.ndarray:
        """A copy of one output tensor (the region is reused by the next call)."""
        from tritonclient.utils import shared_memory, triton_to_np_dtype

        return np.array(shared_memory.get_contents_as_numpy(self._handle, triton_to_np_dtype(datatype),
                                                            shape, offset=offset), copy=True)

    def release(self) -> None:
        if self._handle is None:
            return
        from tritonclient.utils import shared_memory

        try:
            self._client.unregister_system_shared_memory(self._name)
        except Exception as exc:  # noqa: BLE001 - the server may be gone; the local region still goes
            log.debug("unregister %s failed: %s", self._name, exc)
        shared_memory.destroy_shared_memory_region(self._handle)
        self._handle = None
        self.byte_size = 0


class TritonBackend(InferenceBackend):
    name = "triton"

    def __init__(self, settings: Settings, ready_timeout_s: float | None = None):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as exc:  # pragma: no cover - tritonclient is a core dependency
            raise BackendUnavailable(f"triton backend needs tritonclient[grpc]: {exc}") from exc
        if not settings.triton_url:
            raise ValueError("settings.triton_url: the Triton backend needs HOST:PORT of Triton's gRPC endpoint")
        self._grpc = grpcclient
        self.url = settings.triton_url
        self._timeout_s = settings.triton_timeout_s
        self._client = grpcclient.InferenceServerClient(self.url, channel_args=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
        ])
        mode = settings.triton_shared_memory
        self.uses_shared_memory = mode == "system" or (mode == "auto" and is_local(self.url))
        self._lock = threading.Lock()
        # a counter, not id(self): a closed backend's id can be reused by the next one in this process
        prefix = f"oncostream_{os.getpid()}_{next(_backend_ids)}"
        self._regions = (_Region(self._client, f"{prefix}_in"), _Region(self._client, f"{prefix}_out")) \
            if self.uses_shared_memory else None
        self._contracts = {n: load_contract(n, settings.model_repository) for n in (*MODEL_NAMES, *ENSEMBLES)}
        self._versions: dict[str, str] = {}
        self._wait_until_ready(self._timeout_s if ready_timeout_s is None else ready_timeout_s)
        self._check_contracts()
        self._views_per_request = max(1, self._contracts["mammo_classifier"].max_batch_size // 2)
        log.info("triton backend on %s (shared memory: %s)", self.url, "system" if self._regions else "none")

    # -- start-up ---------------------------------------------------------------------------------

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                if self._client.is_server_live() and all(self._client.is_model_ready(n) for n in self._contracts):
                    return
                last = "server live but models not ready"
            except Exception as exc:  # noqa: BLE001 - not reachable yet
                last = str(exc)
            if time.monotonic() >= deadline:
                raise BackendUnavailable(f"triton at {self.url} not ready after {timeout_s:.0f} s: {last}",
                                         retry_after=RETRY_AFTER_S)
            time.sleep(0.5)

    def _check_contracts(self) -> None:
        for name, contract in self._contracts.items():
            metadata = self._client.get_model_metadata(name, as_json=True)
            differences = metadata_differences(metadata, contract)
            if differences:
                raise ContractMismatch(name, differences)
            if name not in MODEL_NAMES:
                self._versions[name] = str(max(metadata.get("versions") or [contract.version], key=int))
                continue
            # a network's served weights must be the contract's; results then carry its release
            parameters = self._client.get_model_config(name, as_json=True)["config"].get("parameters", {})
            weights = parameters.get(WEIGHTS_PARAMETER, {}).get("string_value")
            if weights != contract.weights_sha256:
                raise ContractMismatch(name, [f"served weights sha256 {str(weights)[:12]}..., contract.yaml names "
                                              f"{str(contract.weights_sha256)[:12]}... (rebuild the Triton repository)"])
            self._versions[name] = contract.release

    # -- inference --------------------------------------------------------------------------------

    def _infer(self, model: str, arrays: dict[str, np.ndarray], outputs: tuple[str, ...],
               output_bounds: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """One ensemble request, retried with backoff on transport failures. `output_bounds`: the
        most bytes each output can take, when known, so outputs can come back through shared memory."""
        delay = BACKOFF_S
        for attempt in range(RETRIES + 1):
            try:
                # the shared-memory regions are reused per call: one request at a time uses them
                with self._lock if self._regions is not None else contextlib.nullcontext():
                    return self._infer_once(model, arrays, outputs, output_bounds)
            except InferenceServerException as exc:
                if not _transient(exc):
                    raise TritonInferenceError(f"{model}: {exc.message() or exc}") from exc
                if self._regions is not None:
                    with self._lock:
                        for region in self._regions:
                            region.release()  # a restarted server has forgotten the registration
                if attempt == RETRIES:
                    raise BackendUnavailable(f"triton at {self.url}: {model} failed {RETRIES + 1} times: {exc}",
                                             retry_after=RETRY_AFTER_S) from exc
                log.warning("triton %s: %s; retrying in %.1f s", model, exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _infer_once(self, model: str, arrays: dict[str, np.ndarray], outputs: tuple[str, ...],
                    output_bounds: dict[str, int] | None) -> dict[str, np.ndarray]:
        grpc = self._grpc
        inputs = [grpc.InferInput(name, list(a.shape), _datatype(a)) for name, a in arrays.items()]
        values = list(arrays.values())
        if self._regions is not None and sum(a.nbytes for a in values) >= SHARED_MEMORY_MIN_BYTES:
            self._regions[0].bind_inputs(inputs, values)
        else:
            for tensor, array in zip(inputs, values):
                tensor.set_data_from_numpy(array)
        requested = [grpc.InferRequestedOutput(o) for o in outputs]
        offsets = None
        if (self._regions is not None and output_bounds is not None
                and sum(output_bounds.values()) >= SHARED_MEMORY_MIN_BYTES):
            offsets = self._regions[1].bind_outputs(requested, [output_bounds[o] for o in outputs])
        result = self._client.infer(model, inputs, outputs=requested, client_timeout=self._timeout_s)
        if offsets is None:
            return {o: result.as_numpy(o) for o in outputs}
        read = {}
        for name, offset in zip(outputs, offsets):
            tensor = result.get_output(name)
            read[name] = self._regions[1].read(tensor.datatype, list(tensor.shape), offset)
        return read

    def infer_ldct(self, volume_hu: np.ndarray, spacing_mm: np.ndarray, *, overwrite: bool = False) -> LdctRaw:
        # ``overwrite`` changes nothing here: the server denoises its own copy of the request
        out = self._infer(LDCT_ENSEMBLE, {"volume_hu": np.ascontiguousarray(volume_hu, np.float32),
                                          "spacing_mm": np.ascontiguousarray(spacing_mm, np.float32)},
                          _LDCT_OUTPUTS, _LDCT_OUTPUT_BOUNDS)
        # the server's detect step kept look-back candidates below its detector contract's operating point;
        # the served weights are this contract's (checked at start-up) and the operating point is fitted with them
        return LdctRaw(**out, operating_point=detection_threshold(self._contracts["ldct_nodule_detector"]))

    def infer_mammo(self, images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> MammoRaw:
        if not (len(images) == len(frames) == len(masks)):
            raise ValueError(f"images, frames and masks differ in length: {len(images)}, {len(frames)}, {len(masks)}")
        views = len(images)
        malignancy = np.zeros(views, np.float32)
        uncertainty = np.zeros(views, np.float32)
        density = np.zeros((views, 4), np.float32)
        heatmaps: list[np.ndarray | None] = [None] * views
        for group in self._view_groups(images):
            out = self._infer(MAMMO_ENSEMBLE, {
                "image": np.ascontiguousarray(np.stack([images[i] for i in group]), np.float32),
                "frame": np.ascontiguousarray(np.stack([frames[i] for i in group]), np.float32),
                "mask": np.ascontiguousarray(np.stack([masks[i] for i in group]), np.uint8),
            }, _MAMMO_OUTPUTS)
            for position, view in enumerate(group):
                malignancy[view] = out["malignancy"][position]
                uncertainty[view] = out["uncertainty"][position]
                density[view] = out["density"][position]
                heatmaps[view] = out["heatmaps"][position]
        return MammoRaw(malignancy=malignancy, heatmaps=np.stack(heatmaps).astype(np.float32), density=density,
                        uncertainty=uncertainty)

    def _view_groups(self, images: list[np.ndarray]) -> list[list[int]]:
        """Views of one shape go together (a request is one dense tensor), at most as many as the
        classifier's batch holds after the test-time augmentation doubles them. Every per-view
        result is independent of its neighbours, so grouping does not change any number."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(tuple(np.shape(image)), []).append(index)
        size = self._views_per_request
        return [members[i:i + size] for members in by_shape.values() for i in range(0, len(members), size)]

    def model_versions(self) -> dict[str, str]:
        return {n: self._versions[n] for n in MODEL_NAMES}

    def calibration(self, name: str) -> dict[str, float]:
        # the server checked against these contracts at start (_check_contracts: same weights)
        return dict(self._contracts[name].calibration)

    @property
    def shared_memory_prefix(self) -> str | None:
        """Name prefix of the system shared-memory regions this backend registers (None: plain gRPC)."""
        return self._regions[0].prefix.rsplit("_", 1)[0] if self._regions is not None else None

    def close(self) -> None:
        with self._lock:
            for region in self._regions or ():
                region.release()
        self._client.close()


def _datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def metadata_differences(metadata: dict, contract: ModelContract) -> list[str]:
    """Triton model metadata (JSON form) vs a contract: names, dtypes, ranks and fixed dims."""
    differences = []
    for kind, served, declared in (("input", metadata.get("inputs", []), contract.inputs),
                                   ("output", metadata.get("outputs", []), contract.outputs)):
        by_name = {t["name"]: t for t in served}
        for spec in declared:
            tensor = by_name.get(spec.name)
            if tensor is None:
                differences.append(f"{kind} {spec.name!r} missing (server has {sorted(by_name)})")
                continue
            if tensor["datatype"] != spec.dtype:
                differences.append(f"{kind} {spec.name!r} is {tensor['datatype']}, card says {spec.dtype}")
            shape = [int(d) for d in tensor["shape"]]
            if len(shape) != len(spec.shape):
                differences.append(f"{kind} {spec.name!r} has shape {shape}, card says {spec.shape}")
            elif any(a != b and -1 not in (a, b) for a, b in zip(shape, spec.shape)):
                differences.append(f"{kind} {spec.name!r} has shape {shape}, card says {spec.shape}")
        extra = set(by_name) - {s.name for s in declared}
        if extra:
            differences.append(f"server has {kind}s the card does not declare: {sorted(extra)}")
    return differences
