"""The five networks on a GPU in PyTorch (fp32, fp16, bf16) and the preprocessing in CuPy: a measurement
for a machine that has a GPU but neither TensorRT nor GPU DALI (perf/gpu_check.py measures those).

    python -m perf.gpu_torch --out DIR            # on a GPU host: torch (CUDA), CuPy, onnx, onnxruntime
    python -m perf.gpu_torch --out DIR --device cpu --quick   # the same code path, small, on a CPU

Needs only torch, numpy, onnx, onnxruntime (and CuPy for the preprocessing rows): none of the serving
stack. The networks are the training definitions (training/ldct_models.py, training/mammo_nets.py)
carrying the served weights, read from the committed ONNX files (the training checkpoints are not
always the exported weights): each BatchNorm folded into its convolution as the export did, and the
mammography classifier's Platt constants, folded into its graph, recovered by a least-squares fit of
its ONNX output. Every network's outputs are compared with ONNX Runtime (CPU) on the committed ONNX
file before anything is timed: the parity table.

Timings: CUDA events around each call after warm-up, the median of repeated calls, at the batch shapes the
served path uses (ingest/steps: denoiser 8 slices of 512 x 512, the detector on one full-size series'
2 mm grid, segmenter patches 8 x 48^3, mammography 8 views of 512 x 416). Per study: a full-size LDCT
series (155 slices at 1.25 mm, 0.7 mm pixels; 48 candidates incl. look-back, each with its mirror
pass) and a mammography exam (4 views and their mirrors) in GPU milliseconds of network time.

Writes DIR/gpu_torch.json and DIR/gpu_torch.md (a RESULTS.md section, labelled as PyTorch on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from training.ldct_models import CalibratedDetector, CalibratedSegmenter, DenoiseNet, DetectorNet, SegmenterNet
from training.mammo_nets import ClassifierNet, DensityNet, ExportedDensity, ExportedEnsemble, view_logit

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
# a full-size series as the synthetic generator writes it (perf/bench_throughput.py size sweep)
LDCT_SLICES, LDCT_PIXELS, LDCT_SPACING = 155, 512, (1.25, 0.7, 0.7)
DETECTOR_GRID = (100, 180, 180)  # its 2 mm grid (ingest/preprocess/ldct.py detector_input_reference)
CANDIDATES = 48  # reported + look-back at most (ingest/steps/ldct.py MAX_SERIES_CANDIDATES), each mirrored
VIEWS = 8  # 4 views and their mirrors (ingest/steps/mammo.py)
SECTION = "GPU measurement: the networks in PyTorch and the preprocessing in CuPy (not TensorRT)"


def onnx_file(name: str) -> Path:
    return REPOSITORY / name / "1" / "model.onnx"


def fold_batchnorm(module: nn.Module) -> None:
    """Every Conv followed by a BatchNorm inside a Sequential becomes one Conv with a bias (eval
    statistics folded in; the BatchNorm is replaced by Identity), as the ONNX export folds them."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d)):
                module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()


def load_from_onnx(model: nn.Module, name: str, example: torch.Tensor) -> None:
    """The ONNX graph's weights into the (BatchNorm-folded) torch definition: initializers named like a
    state-dict entry by name, every other convolution in the order the graph runs them, which is the
    order the torch forward runs its convolutions (recorded with hooks)."""
    graph = onnx.load(str(onnx_file(name))).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = model.state_dict()
    named = {k: torch.from_numpy(np.array(v)) for k, v in values.items() if k in state}
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == len(order), f"{name}: {len(convs)} convolutions in ONNX, {len(order)} in torch"
    with torch.no_grad():
        for node, conv in zip(convs, order):
            weight = values[node.input[1]]
            assert tuple(weight.shape) == tuple(conv.weight.shape), (name, node.name, weight.shape, conv.weight.shape)
            conv.weight.copy_(torch.from_numpy(weight))
            if len(node.input) > 2:
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
                conv.bias.copy_(torch.from_numpy(values[node.input[2]]))
        for key, value in named.items():
            state[key].copy_(value.reshape(state[key].shape))


def ort_outputs(name: str, array: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(onnx_file(name)), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})


def build(quick: bool) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """name -> (network in eval mode with the committed weights, served input shape)."""
    pixels = 128 if quick else LDCT_PIXELS
    grid = (20, 36, 36) if quick else DETECTOR_GRID
    shapes = {"ldct_denoise": (8, 1, pixels, pixels), "ldct_nodule_detector": (1, 1, *grid),
              "ldct_nodule_segmenter": (8, 1, 48, 48, 48), "mammo_classifier": (VIEWS, 1, 512, 416),
              "mammo_density": (VIEWS, 1, 512, 416)}
    definitions = {"ldct_denoise": DenoiseNet(), "ldct_nodule_detector": CalibratedDetector(DetectorNet()),
                   "ldct_nodule_segmenter": CalibratedSegmenter(SegmenterNet()),
                   "mammo_classifier": ExportedEnsemble([ClassifierNet(), ClassifierNet()], [(1.0, 0.0)] * 2),
                   "mammo_density": ExportedDensity(DensityNet(), 1.0)}
    models = {}
    for name, model in definitions.items():
        model.eval()
        fold_batchnorm(model)
        load_from_onnx(model, name, torch.zeros(1, *shapes[name][1:]))
        models[name] = (model, shapes[name])
    recover_platt(models["mammo_classifier"][0])
    return models


def recover_platt(classifier: ExportedEnsemble) -> None:
    """The members' Platt constants are folded into the classifier's ONNX graph: the served logit is
    sum_k (a_k / K) v_k + mean_k b_k, so a least-squares fit of the ONNX output's logit on the K torch
    view logits and a constant, over a few inputs, recovers them (each member given the mean offset)."""
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (8, 1, 512, 416)).astype(np.float32))
    with torch.no_grad():
        v = np.column_stack([view_logit(net(x)[1]).double().numpy() for net in classifier.nets])
    p = np.clip(ort_outputs("mammo_classifier", x.numpy())[0].ravel().astype(np.float64), 1e-12, 1 - 1e-12)
    *slopes, offset = np.linalg.lstsq(np.column_stack([v, np.ones(len(v))]), np.log(p / (1 - p)), rcond=None)[0]
    members = len(slopes)
    classifier.platt.copy_(torch.tensor([[members * s, offset] for s in slopes], dtype=torch.float32))


def realistic_input(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Inputs in each model's value range (contracts): windowed HU or normalised intensity."""
    low, high = (-0.5, 1.5) if name == "ldct_denoise" else (0.0, 1.0)
    return rng.uniform(low, high, shape).astype(np.float32)


def parity(models, rng) -> dict[str, float]:
    """Largest absolute difference of any output between the torch network (fp32, CPU) and ONNX Runtime
    on the committed ONNX file, on one input of the served shape (batch 2)."""
    diffs = {}
    for name, (model, shape) in models.items():
        x = realistic_input(name, (2, *shape[1:]), rng)
        with torch.no_grad():
            got = model(torch.from_numpy(x))
        got = got if isinstance(got, tuple) else (got,)
        want = ort_outputs(name, x)
        diffs[name] = max(float(np.max(np.abs(g.numpy() - w))) for g, w in zip(got, want))
    return diffs


def time_call(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
        else:
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def time_models(models, device: str, repeats: int, rng) -> list[dict]:
    rows = []
    for name, (model, shape) in models.items():
        x = torch.from_numpy(realistic_input(name, shape, rng)).to(device)
        reference = None
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            if device == "cpu" and precision == "fp16":
                continue
            net = model.to(device)
            autocast = torch.autocast(device_type=device, dtype=dtype, enabled=precision != "fp32")

            def call():
                with torch.inference_mode(), autocast:
                    return net(x)

            out = call()
            first = (out[0] if isinstance(out, tuple) else out).float()
            reference = first if reference is None else reference
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = time_call(call, device, repeats)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
            rows.append({"model": name, "precision": precision, "batch_shape": list(shape), "seconds": seconds,
                         "items_per_s": shape[0] / seconds, "peak_gpu_mib": peak,
                         "max_abs_diff_vs_fp32": float((first - reference).abs().max())})
    return rows


def batch_sweep(models, device: str, repeats: int, rng, batches=(8, 32, 128)) -> list[dict]:
    """Items/s of the per-item networks at larger batches, as Triton's dynamic batching would form them
    across studies (the served path sends 8)."""
    rows = []
    for name in ("ldct_nodule_segmenter", "mammo_classifier"):
        model, shape = models[name]
        net = model.to(device)
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            if device == "cpu" and precision == "fp16":
                continue
            for batch in batches:
                x = torch.from_numpy(realistic_input(name, (batch, *shape[1:]), rng)).to(device)

                def call(net=net, x=x, dtype=dtype, precision=precision):
                    with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype,
                                                                enabled=precision != "fp32"):
                        return net(x)

                seconds = time_call(call, device, repeats)
                rows.append({"model": name, "precision": precision, "batch": batch, "seconds": seconds,
                             "items_per_s": batch / seconds})
    return rows


def transfer(device: str, quick: bool, repeats: int) -> list[dict]:
    """Host -> GPU copy of one full-size series' HU volume (float32), from ordinary and from pinned memory."""
    if device != "cuda":
        return []
    slices, pixels = (20, 128) if quick else (LDCT_SLICES, LDCT_PIXELS)
    pageable = torch.from_numpy(np.random.default_rng(3).normal(-600, 300, (slices, pixels, pixels)).astype(np.float32))
    pinned = pageable.pin_memory()
    rows = []
    for label, host in (("pageable", pageable), ("pinned", pinned)):
        seconds = time_call(lambda host=host: host.to("cuda", non_blocking=True), device, repeats)
        rows.append({"memory": label, "mb": host.numel() * 4 / 1e6, "seconds": seconds,
                     "gb_per_s": host.numel() * 4 / 1e9 / seconds})
    return rows


def per_study(rows: list[dict], quick: bool) -> dict[str, dict[str, float]]:
    """GPU network seconds for one full-size LDCT series and one mammography exam, per precision."""
    by = {(r["model"], r["precision"]): r["seconds"] for r in rows}
    slices = 20 if quick else LDCT_SLICES
    out = {}
    for precision in sorted({r["precision"] for r in rows}):
        ldct = (math.ceil(slices / 8) * by[("ldct_denoise", precision)] + by[("ldct_nodule_detector", precision)]
                + math.ceil(2 * CANDIDATES / 8) * by[("ldct_nodule_segmenter", precision)])
        mammo = by[("mammo_classifier", precision)] + by[("mammo_density", precision)]
        out[precision] = {"ldct_series_s": ldct, "mammo_exam_s": mammo}
    return out


def cupy_preprocessing(quick: bool, repeats: int) -> list[dict]:
    """The preprocessing's heavy steps on the GPU: HU -> denoiser input (scale), the whole series
    resampled to the detector's 2 mm grid (linear, as DALI fn.resize), a view resized to 512 x 416."""
    import cupy as cp
    from cupyx.scipy import ndimage as cnd

    rng = np.random.default_rng(2)
    slices, pixels = (20, 128) if quick else (LDCT_SLICES, LDCT_PIXELS)
    volume = cp.asarray(rng.normal(-600, 300, (slices, pixels, pixels)).astype(np.float32))
    view = cp.asarray(rng.uniform(0, 4095, (2048 if not quick else 512, 1664 if not quick else 416)).astype(np.float32))
    zoom = tuple(s / 2.0 for s in LDCT_SPACING)
    steps = {
        "series HU -> denoiser input (clamp, scale)": lambda: cp.clip(volume, -1000, 1000) / 1000.0,
        "series -> detector 2 mm grid (linear)": lambda: cnd.zoom(volume, zoom, order=1),
        "view -> 512 x 416 (linear)": lambda: cnd.zoom(view, (512 / view.shape[0], 416 / view.shape[1]), order=1),
    }
    rows = []
    for label, fn in steps.items():
        def call(fn=fn):
            fn()
            cp.cuda.Device().synchronize()
        for _ in range(2):
            call()
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t)
        rows.append({"step": label, "seconds": statistics.median(samples)})
    return rows


def markdown(report: dict) -> str:
    """The RESULTS.md section's body."""
    lines = ["A measurement of the training definitions with the committed weights in PyTorch on the GPU "
             "(autocast for fp16/bf16), not of TensorRT engines or GPU DALI (neither is installed on that "
             "machine; `python -m perf.gpu_check` measures them where they are). Parity: the largest absolute "
             "difference of any output from ONNX Runtime (CPU) on the committed ONNX file, fp32.", "",
             "| model | parity vs ONNX Runtime (max abs diff) |", "|---|---|"]
    lines += [f"| {k} | {v:.2e} |" for k, v in report["parity"].items()]
    lines += ["", "| model | precision | batch shape | ms per batch (median) | items/s | peak GPU MiB "
              "| max abs diff vs fp32 (first output) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {'x'.join(map(str, r['batch_shape']))} | {r['seconds'] * 1000:.2f} "
              f"| {r['items_per_s']:.0f} | {r['peak_gpu_mib']:.0f} | {r['max_abs_diff_vs_fp32']:.2e} |"
              for r in report["models"]]
    lines += ["", "Network time per study on the GPU (one full-size LDCT series: 155 slices of 512 x 512 in batches of "
              "8, one detector run, 48 candidates and their mirrors in batches of 8; one mammography exam: 8 views "
              "in one batch per network):", "", "| precision | LDCT series ms | mammography exam ms |", "|---|---|---|"]
    lines += [f"| {p} | {v['ldct_series_s'] * 1000:.1f} | {v['mammo_exam_s'] * 1000:.1f} |"
              for p, v in report["per_study"].items()]
    if report.get("batches"):
        lines += ["", "Larger batches (what dynamic batching across studies would form; the served path sends 8):", "",
                  "| model | precision | batch | ms per batch | items/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['precision']} | {r['batch']} | {r['seconds'] * 1000:.2f} | {r['items_per_s']:.0f} |"
                  for r in report["batches"]]
    if report.get("transfer"):
        lines += ["", "| host -> GPU, one full-size series (float32) | MB | ms (median) | GB/s |", "|---|---|---|---|"]
        lines += [f"| {r['memory']} memory | {r['mb']:.0f} | {r['seconds'] * 1000:.2f} | {r['gb_per_s']:.1f} |"
                  for r in report["transfer"]]
    if report.get("cupy"):
        lines += ["", "| CuPy preprocessing step | ms (median) |", "|---|---|"]
        lines += [f"| {r['step']} | {r['seconds'] * 1000:.2f} |" for r in report["cupy"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (a CPU check)")
    parser.add_argument("--merge", type=Path, help="write a gpu_torch.json's section into perf/RESULTS.md")
    args = parser.parse_args(argv)
    if args.merge:
        from perf.results import write_section

        report = json.loads(args.merge.read_text())
        write_section(SECTION, "python -m perf.gpu_torch --out DIR", markdown(report),
                      measured_on=report["machine"], measured_at=report["measured"])
        return 0
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = build(args.quick)
    report = {"parity": parity(models, rng)}
    repeats = 3 if args.quick else 20
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        gpu = torch.cuda.get_device_name(0)
    else:
        gpu = "no GPU (CPU run)"
    report["machine"] = f"{gpu}; {platform.processor() or platform.machine()}, torch {torch.__version__}"
    report["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["models"] = time_models(models, args.device, repeats, rng)
    report["per_study"] = per_study(report["models"], args.quick)
    report["batches"] = batch_sweep(models, args.device, repeats, rng, (8, 16) if args.quick else (8, 32, 128))
    report["transfer"] = transfer(args.device, args.quick, repeats)
    try:
        report["cupy"] = cupy_preprocessing(args.quick, repeats) if args.device == "cuda" else []
    except ImportError:
        report["cupy"] = []
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_torch.json").write_text(text)
        (args.out / "gpu_torch.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
