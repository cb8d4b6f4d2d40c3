"""LDCT preprocessing, the one definition shared by serving and training.

Three model inputs come from a series' HU volume (float32 [D, H, W], slices inferior to superior):

- ``ldct_denoise``: every axial slice as HU / 1000, clamped to [-1.024, 3.071] (air -1, water 0).
- ``ldct_nodule_detector``: the (denoised) volume resampled to a 2 mm isotropic grid, windowed.
- ``ldct_nodule_segmenter``: a 48 mm cube at 1 mm around each candidate, windowed.

Resampling is DALI's ``fn.resize`` with linear interpolation, no antialiasing and an ROI given in
input voxels (pixel i spans [i, i + 1]), whose borders clamp to the edge. That is exactly
``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` at coordinates
``roi_start + (j + 0.5) * (roi_end - roi_start) / n - 0.5``, the numpy realisation training uses
(the training environment has no DALI); tests/unit/test_ldct_steps.py checks that both agree.
The window is clamp(HU, -1000, 600) then (HU + 200) / 800, so air is -1 and +600 HU is +1: wide
enough to keep ground glass (-700..-300 HU) and calcification (> 200 HU) apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

DETECTOR_SPACING_MM = 2.0
DETECTOR_STRIDE = 4  # the detector's volume edges must be multiples of this (two 2x downsamplings)
PATCH_SPACING_MM = 1.0
PATCH_SIZE = 48
HU_MIN, HU_MAX = -1000.0, 600.0
HU_CENTER, HU_HALF_WIDTH = -200.0, 800.0
DENOISE_SCALE = 1000.0
DENOISE_HU_MIN, DENOISE_HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class ResampleGrid:
    """Where a resampled grid lies in the source volume: ROI in source voxels (pixel i spans [i, i+1])."""

    roi_start: np.ndarray  # float64 [3] (z, y, x)
    roi_end: np.ndarray  # float64 [3]
    shape: tuple[int, int, int]

    @property
    def step(self) -> np.ndarray:
        """Source voxels per output voxel along each axis."""
        return (self.roi_end - self.roi_start) / np.asarray(self.shape, np.float64)

    def to_source_index(self, index: np.ndarray) -> np.ndarray:
        """Output voxel index (..., 3) -> source voxel index (pixel-centre convention)."""
        return self.roi_start + (np.asarray(index, np.float64) + 0.5) * self.step - 0.5

    def coordinates(self) -> list[np.ndarray]:
        """Per-axis source coordinates of the output voxel centres (the map_coordinates form)."""
        return [self.roi_start[a] + (np.arange(self.shape[a]) + 0.5) * self.step[a] - 0.5 for a in range(3)]


def detector_grid(volume_shape: tuple[int, ...], spacing_mm: np.ndarray) -> ResampleGrid:
    """The 2 mm isotropic grid covering the series, padded up to a multiple of the detector stride.

    Padding extends the ROI past the last voxel; the edge clamp repeats the border there."""
    spacing = np.asarray(spacing_mm, np.float64)
    extent_mm = np.asarray(volume_shape[:3], np.float64) * spacing
    n = np.ceil(extent_mm / DETECTOR_SPACING_MM).astype(int)
    n = ((n + DETECTOR_STRIDE - 1) // DETECTOR_STRIDE) * DETECTOR_STRIDE
    roi_end = n * DETECTOR_SPACING_MM / spacing
    return ResampleGrid(np.zeros(3), roi_end, (int(n[0]), int(n[1]), int(n[2])))


def patch_grid(center_index: np.ndarray, spacing_mm: np.ndarray) -> ResampleGrid:
    """The 48 mm cube at 1 mm centred on a source voxel index (float, z y x).

    Patch voxel p sits at source index ``center + (p - 23.5) * 1 mm / spacing``."""
    spacing = np.asarray(spacing_mm, np.float64)
    half = PATCH_SIZE * PATCH_SPACING_MM / 2.0 / spacing
    center = np.asarray(center_index, np.float64) + 0.5
    return ResampleGrid(center - half, center + half, (PATCH_SIZE,) * 3)


def patch_to_source_index(patch_index: np.ndarray, center_index: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Patch voxel index (..., 3) -> source voxel index, for the patch centred on ``center_index``."""
    offset = (np.asarray(patch_index, np.float64) - (PATCH_SIZE / 2.0 - 0.5)) * PATCH_SPACING_MM
    return np.asarray(center_index, np.float64) + offset / np.asarray(spacing_mm, np.float64)


def source_to_patch_index(source_index: np.ndarray, center_index: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`patch_to_source_index`."""
    delta = (np.asarray(source_index, np.float64) - np.asarray(center_index, np.float64)) * np.asarray(spacing_mm)
    return delta / PATCH_SPACING_MM + (PATCH_SIZE / 2.0 - 0.5)


def crop_for_grid(volume_shape: tuple[int, ...], grid: ResampleGrid) -> tuple[slice, slice, slice]:
    """Integer source block that holds every voxel the linear resample of ``grid`` touches.

    The block is clipped only at the volume's own edges, so the edge clamp inside the block equals
    the edge clamp on the whole volume."""
    lo = np.floor(grid.roi_start - 1.0).astype(int)
    hi = np.ceil(grid.roi_end + 1.0).astype(int)
    slices = []
    for axis in range(3):
        start = int(np.clip(lo[axis], 0, volume_shape[axis] - 1))
        stop = int(np.clip(hi[axis], start + 1, volume_shape[axis]))
        slices.append(slice(start, stop))
    return tuple(slices)


def window(hu: np.ndarray) -> np.ndarray:
    """HU -> model scale: clamp to [-1000, 600] and map to [-1, 1]."""
    return ((np.clip(hu, HU_MIN, HU_MAX) - HU_CENTER) / HU_HALF_WIDTH).astype(np.float32)


def denoise_input_reference(volume_hu: np.ndarray) -> np.ndarray:
    """numpy realisation of :func:`denoise_input`."""
    return (np.clip(volume_hu, DENOISE_HU_MIN, DENOISE_HU_MAX) / DENOISE_SCALE).astype(np.float32)


def resample_reference(volume: np.ndarray, grid: ResampleGrid) -> np.ndarray:
    """numpy realisation of the DALI resample (linear, no antialias, edge clamp)."""
    block = crop_for_grid(volume.shape, grid)
    offset = np.array([s.start for s in block], np.float64)
    axes = [c - offset[a] for a, c in enumerate(grid.coordinates())]
    sub = np.asarray(volume[block], np.float32)
    # separable linear interpolation (the same weights as map_coordinates order=1, mode="nearest")
    for axis, coords in enumerate(axes):
        n = sub.shape[axis]
        coords = np.clip(coords, 0.0, n - 1.0)
        lo = np.floor(coords).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (coords - lo).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        w = w.reshape(shape)
        sub = np.take(sub, lo, axis=axis) * (1.0 - w) + np.take(sub, hi, axis=axis) * w
    return sub.astype(np.float32)


def detector_input_reference(volume_hu: np.ndarray, spacing_mm: np.ndarray) -> tuple[np.ndarray, ResampleGrid]:
    """numpy realisation of :func:`detector_input`."""
    grid = detector_grid(volume_hu.shape, spacing_mm)
    return window(resample_reference(volume_hu, grid)), grid


def patches_reference(volume_hu: np.ndarray, spacing_mm: np.ndarray, centers_index: np.ndarray) -> np.ndarray:
    """numpy realisation of :func:`nodule_patches`."""
    out = np.empty((len(centers_index), PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), np.float32)
    for k, center in enumerate(np.asarray(centers_index, np.float64).reshape(-1, 3)):
        out[k] = window(resample_reference(volume_hu, patch_grid(center, spacing_mm)))
    return out


# --- DALI realisation (serving) ---------------------------------------------------------------

def resample_window_pipeline(batch_size: int, num_threads: int = 2, device_id: int | None = None):
    """DALI pipeline: external sources ``volume`` (float32 DHWC, HU), ``size`` (float32 [3]),
    ``roi_start`` / ``roi_end`` (float32 [3], source voxels) -> windowed float32 DHWC."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.math import clamp

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def _pipeline():
        volume = fn.external_source(name="volume", dtype=types.FLOAT, layout="DHWC", ndim=4, no_copy=True)
        size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        if device_id is not None:
            volume = volume.gpu()
        resampled = fn.resize(volume, size=size, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                              interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT)
        return (clamp(resampled, HU_MIN, HU_MAX) - HU_CENTER) / HU_HALF_WIDTH

    return _pipeline()


def denoise_input_pipeline(batch_size: int = 1, num_threads: int = 2, device_id: int | None = None):
    """DALI pipeline: external source ``volume`` (float32 DHW, HU) -> HU / 1000, clamped."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.math import clamp

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def _pipeline():
        volume = fn.external_source(name="volume", dtype=types.FLOAT, layout="DHW", ndim=3, no_copy=True)
        if device_id is not None:
            volume = volume.gpu()
        return clamp(volume, DENOISE_HU_MIN, DENOISE_HU_MAX) / DENOISE_SCALE

    return _pipeline()


class _Pipelines:
    """Built DALI pipelines, one per (kind, batch size); building costs ~15 ms, running is cheap.
    Volumes are fed without a copy (``no_copy``): the caller's contiguous arrays stay alive and
    unchanged until ``run`` returns, which with a synchronous executor is when DALI is done with them.
    A whole series is resampled by a pipeline of its own (``keep=False``), dropped after the run: a
    pipeline keeps the buffers of its largest run (~220 MB for a full-size series), which would
    otherwise stay resident between series."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _build(kind: str, batch_size: int):
        factory = resample_window_pipeline if kind == "resample" else denoise_input_pipeline
        pipe = factory(batch_size)
        pipe.build()
        return pipe

    def _pipe(self, kind: str, batch_size: int, keep: bool):
        pipe = self._built.get((kind, batch_size)) if keep else None
        if pipe is None:
            pipe = self._build(kind, batch_size)
            if keep:
                self._built[(kind, batch_size)] = pipe
        return pipe

    def warm_up(self) -> None:
        """Build the kept pipelines now: the first build in a process loads DALI's operators (~0.2 s),
        which would otherwise land on the first study's latency."""
        with self._lock:
            for kind, batch_size in (("denoise", 1), ("resample", _PATCH_BATCH), ("resample", 1)):
                self._pipe(kind, batch_size, keep=True)

    def run(self, kind: str, batch_size: int, feeds: dict[str, list[np.ndarray]], keep: bool = True) -> list[np.ndarray]:
        with self._lock:
            pipe = self._pipe(kind, batch_size, keep)
            for name, samples in feeds.items():
                pipe.feed_input(name, samples)
            (out,) = pipe.run()
            return [np.array(out[i]) for i in range(len(out))]


_PIPELINES = _Pipelines()
warm_up = _PIPELINES.warm_up
_PATCH_BATCH = 16


def denoise_input(volume_hu: np.ndarray) -> np.ndarray:
    """Series HU float32 [D, H, W] -> ``ldct_denoise`` scale (HU / 1000), via DALI."""
    (out,) = _PIPELINES.run("denoise", 1, {"volume": [np.ascontiguousarray(volume_hu, np.float32)]})
    return out


def _resample_batch(blocks: list[np.ndarray], grids: list[ResampleGrid], offsets: list[np.ndarray],
                    keep: bool = True) -> list[np.ndarray]:
    batch = _PATCH_BATCH if len(blocks) > 1 else 1
    results: list[np.ndarray] = []
    for start in range(0, len(blocks), batch):
        chunk = range(start, min(start + batch, len(blocks)))
        feeds = {
            "volume": [np.ascontiguousarray(blocks[i][..., None], np.float32) for i in chunk],
            "size": [np.asarray(grids[i].shape, np.float32) for i in chunk],
            "roi_start": [(grids[i].roi_start - offsets[i]).astype(np.float32) for i in chunk],
            "roi_end": [(grids[i].roi_end - offsets[i]).astype(np.float32) for i in chunk],
        }
        results.extend(out[..., 0] for out in _PIPELINES.run("resample", batch, feeds, keep))
    return results


def detector_input(volume_hu: np.ndarray, spacing_mm: np.ndarray) -> tuple[np.ndarray, ResampleGrid]:
    """Denoised HU [D, H, W] -> windowed 2 mm isotropic volume (edges multiples of 4), via DALI."""
    grid = detector_grid(volume_hu.shape, spacing_mm)
    (out,) = _resample_batch([volume_hu], [grid], [np.zeros(3)], keep=False)
    return out, grid


def nodule_patches(volume_hu: np.ndarray, spacing_mm: np.ndarray, centers_index: np.ndarray) -> np.ndarray:
    """Denoised HU [D, H, W] + K source voxel centres -> windowed float32 [K, 48, 48, 48] at 1 mm, via DALI."""
    centers = np.asarray(centers_index, np.float64).reshape(-1, 3)
    if len(centers) == 0:
        return np.zeros((0, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), np.float32)
    grids = [patch_grid(c, spacing_mm) for c in centers]
    blocks, offsets = [], []
    for grid in grids:
        block = crop_for_grid(volume_hu.shape, grid)
        blocks.append(volume_hu[block])
        offsets.append(np.array([s.start for s in block], np.float64))
    return np.stack(_resample_batch(blocks, grids, offsets)).astype(np.float32)
