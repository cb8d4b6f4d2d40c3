"""GPU check of the `tensorrt` realisation: one command, on a host with an NVIDIA GPU, the NVIDIA
driver, and the `tensorrt` and `torch` (CUDA) wheels next to this project:

    python -m perf.gpu_check [--out DIR] [--size small|full] [--iterations N]

1. `oncostream models build --target tensorrt --out DIR` (configs, ONNX, tensorrt_build.json);
2. `python -m oncostream.model_build finish DIR`: every FP16 engine (TensorRT Python API, one
   dynamic-batch optimisation profile) and the DALI pipeline serialized with device_id=0;
3. runs the embedded pipeline (ONNX Runtime, CPU) on a synthetic LDCT series and mammography exam,
   recording every network's real input batch, then runs each engine on the same batch and
   checks relative error (max |TRT - ORT| / max |ORT|) < 1e-2 per output;
4. checks the GPU DALI mammography preprocessing against the CPU one (same definition);
5. reports engine throughput (items/s at the recorded batch) next to ONNX Runtime on the CPU.

Exit status 0 when every check passes, 1 when one fails, 2 when there is no GPU here.
NOT RUN: no machine of this project's CI has a GPU; nothing in this repository claims it ran.
It does not start a GPU Triton server (the pytriton wheel's tritonserver has no TensorRT backend;
that server comes from NVIDIA's Triton container).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RELATIVE_TOLERANCE = 1e-2  # FP16 engines vs FP32 ONNX Runtime


def _gpu_available() -> str | None:
    """None when a CUDA device and TensorRT are usable, else why not."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError as exc:
        return f"needs the tensorrt and torch (CUDA) wheels: {exc}"
    if not torch.cuda.is_available():
        return "no CUDA device visible"
    return None


def record_network_inputs(size: str, seed: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every feed each network receives while the embedded backend processes one LDCT series and
    one mammography exam (real preprocessing, real between-model glue)."""
    from ingest.backends.embedded import EmbeddedBackend
    from oncostream.synth.ldct import make_ldct_phantom
    from oncostream.synth.mammo import make_mammo_phantom

    backend = EmbeddedBackend()
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    run_model = backend.run_model

    def recording(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds.setdefault(name, []).append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return run_model(name, inputs)

    backend.run_model = recording
    ldct = make_ldct_phantom(seed, size=size)
    backend.infer_ldct(ldct.hu_low, np.asarray(ldct.spacing_mm, np.float32))
    backend.infer_mammo(*_canonical_views(make_mammo_phantom(seed, size=size)))
    backend.run_model = run_model
    return feeds


def _canonical_views(phantom) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The phantom's views with their canonical frames, as the served path sends them."""
    from ingest.mammo import canonical_views
    from ingest.preprocess.mammo import frame_vector
    from oncostream.synth.mammo import mammo_datasets

    images, frames = canonical_views(mammo_datasets(phantom))
    return images, [frame_vector(f) for f in frames], [f.mask for f in frames]


class _Engine:
    """One deserialized engine with torch CUDA buffers (TensorRT 10 tensor API)."""

    def __init__(self, plan: Path):
        import tensorrt as trt

        self._trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        keep = []
        for name, array in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(array.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            dtype = torch.from_numpy(np.zeros(0, self._trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            tensor = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, tensor.data_ptr())
            outputs[name] = tensor
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outputs.items()}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(float(np.abs(want).max()), 1e-6))


def check_networks(repository: Path, feeds: dict, iterations: int) -> tuple[list[dict], bool]:
    from ingest.backends.embedded import EmbeddedBackend
    from oncostream.model_contract import MODEL_NAMES

    reference = EmbeddedBackend()
    rows, ok = [], True
    for name in MODEL_NAMES:
        engine = _Engine(repository / name / "1" / "model.plan")
        worst: dict[str, float] = {}
        for feed in feeds.get(name, []):
            got, want = engine(feed), reference.run_model(name, feed)
            for output, value in want.items():
                worst[output] = max(worst.get(output, 0.0), relative_error(got[output], value))
        passed = bool(worst) and all(e < RELATIVE_TOLERANCE for e in worst.values())
        ok &= passed
        feed = max(feeds.get(name, [{}]), key=lambda f: next(iter(f.values())).shape[0] if f else 0)
        items = next(iter(feed.values())).shape[0] if feed else 0
        trt_s = ort_s = float("nan")
        if feed:
            engine(feed)
            started = time.perf_counter()
            for _ in range(iterations):
                engine(feed)
            trt_s = (time.perf_counter() - started) / iterations
            started = time.perf_counter()
            reference.run_model(name, feed)
            ort_s = time.perf_counter() - started
        rows.append({"model": name, "relative_error": worst, "passed": passed, "batch": items,
                     "shape": list(next(iter(feed.values())).shape) if feed else None,
                     "tensorrt_items_per_s": items / trt_s, "onnxruntime_cpu_items_per_s": items / ort_s})
    return rows, ok


def check_dali(size: str, seed: int) -> tuple[dict, bool]:
    """The mammography preprocessing definition on the GPU vs the CPU."""
    from ingest.preprocess.mammo import mammo_preprocess_pipeline
    from oncostream.synth.mammo import make_mammo_phantom

    images, frames, masks = _canonical_views(make_mammo_phantom(seed, size=size))
    names = range(len(images))
    outputs = []
    for device in (None, 0):
        pipeline = mammo_preprocess_pipeline(len(names), device_id=device)
        pipeline.build()
        pipeline.feed_input("image", images)
        pipeline.feed_input("frame", frames)
        pipeline.feed_input("mask", masks)
        (batch,) = pipeline.run()
        if device is not None:
            batch = batch.as_cpu()
        outputs.append(np.stack([np.array(batch[i]) for i in range(len(names))]))
    error = relative_error(outputs[1], outputs[0])
    return {"model": "mammo_preprocess (DALI GPU vs CPU)", "relative_error": error}, error < RELATIVE_TOLERANCE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="repository directory (default: a temp dir)")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--seed", type=int, default=1_000_900)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)
    missing = _gpu_available()
    if missing:
        print(f"gpu_check NOT RUN: {missing}", file=sys.stderr)
        return 2

    from oncostream.model_build import build_repository, finish

    started = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="oncostream-tensorrt-"))
    build_repository("tensorrt", out)
    finish(out)
    built_s = time.monotonic() - started
    feeds = record_network_inputs(args.size, args.seed)
    rows, ok = check_networks(out, feeds, args.iterations)
    dali, dali_ok = check_dali(args.size, args.seed)
    report = {"repository": str(out), "build_s": round(built_s, 1), "networks": rows, "dali": dali,
              "passed": ok and dali_ok, "total_s": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2, default=float))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
