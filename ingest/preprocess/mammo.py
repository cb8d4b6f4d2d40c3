"""Mammography preprocessing, the one definition shared by serving and training.

Every view becomes a float32 [512, 416] model input from its stored pixels and its canonical frame
(ingest/canonical/mammo.py, which decides the numbers): stored * gain + offset (tissue bright,
[0, 1]), rows and/or columns mirrored (chest wall on the left), the frame's region of interest
resampled to 512 x 416 with an antialiased linear (triangle) filter whose borders clamp to the edge,
as DALI's ``fn.resize`` does, and the pixels outside the breast mask set to one background level.

Two realisations compute the same numbers: ``mammo_preprocess_pipeline`` (a DALI pipeline definition,
built with ``device_id=None`` here and unchanged on a GPU) serves; ``preprocess_view_reference`` (numpy)
is what training uses, because the training environment needs no DALI. tests/unit/test_mammo_steps.py
checks that both agree.

A frame travels as one float32 [8] vector (gain, offset, flip_rows, flip_cols, row0, col0, row1, col1)
plus the uint8 [512, 416] mask, so Triton's ensemble carries it as two tensors per view.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
from scipy import sparse

from ingest.canonical.mammo import CANONICAL_BACKGROUND, MODEL_SHAPE, MammoFrame, canonical_view_reference

MODEL_HEIGHT, MODEL_WIDTH = MODEL_SHAPE
FRAME_LENGTH = 8


def frame_vector(frame: MammoFrame) -> np.ndarray:
    """The frame as the float32 [8] vector the pipeline reads."""
    return np.array([frame.gain, frame.offset, float(frame.flip_rows), float(frame.flip_cols), *frame.roi],
                    np.float32)


@lru_cache(maxsize=64)
def _resampling_matrix(n_in: int, n_out: int, start: float, stop: float) -> sparse.csr_matrix:
    """Row i holds the weights of output sample i: a triangle of radius max(scale, 1) input pixels
    centred on the output pixel's centre within [start, stop) (input pixel edges), indices outside
    the image clamped to the edge. Sparse: a row has a few taps, and a dense product spent 2 GFLOP
    per full-size view (most of the training data build)."""
    scale = (stop - start) / n_out
    support = max(scale, 1.0)
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = start + (i + 0.5) * scale
        taps = np.arange(int(np.floor(centre - support)), int(np.ceil(centre + support)) + 1)
        weights = np.maximum(0.0, 1.0 - np.abs((taps + 0.5 - centre) / support))
        np.add.at(matrix[i], np.clip(taps, 0, n_in - 1), weights / weights.sum())
    return sparse.csr_matrix(matrix)


def resize_reference(image: np.ndarray, roi: tuple[float, float, float, float],
                     shape: tuple[int, int] = MODEL_SHAPE) -> np.ndarray:
    """numpy equivalent of DALI's CPU ``fn.resize(interp_type=INTERP_LINEAR, antialias=True)`` of the
    region ``roi`` (row0, col0, row1, col1 in input pixel edges)."""
    row0, col0, row1, col1 = (float(np.float32(v)) for v in roi)
    rows = _resampling_matrix(image.shape[0], shape[0], row0, row1)
    cols = _resampling_matrix(image.shape[1], shape[1], col0, col1)
    return (cols @ (rows @ image.astype(np.float64)).T).T.astype(np.float32)


def blend_background(resized: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels outside the breast mask become the canonical background level."""
    inside = np.asarray(mask, np.float32)
    return (resized * inside + np.float32(CANONICAL_BACKGROUND) * (1.0 - inside)).astype(np.float32)


def frame_resample_reference(image: np.ndarray, frame: MammoFrame) -> np.ndarray:
    """Any per-pixel map of a view (a lesion mask, say) carried into the canonical frame the way its
    pixels are: mirrored and resampled, without the intensity scale or the background."""
    image = np.asarray(image, np.float32)
    if frame.flip_rows:
        image = image[::-1]
    if frame.flip_cols:
        image = image[:, ::-1]
    return resize_reference(image, frame.roi)


def preprocess_view_reference(stored: np.ndarray, frame: MammoFrame) -> np.ndarray:
    """One view -> float32 [512, 416] model input (numpy; the training path)."""
    image = canonical_view_reference(stored, frame)
    return blend_background(resize_reference(image, frame.roi), frame.mask)


def mammo_preprocess_pipeline(batch_size: int, num_threads: int = 1, device_id: int | None = None):
    """DALI pipeline: external sources ``image`` (float32 HW, stored values), ``frame`` (float32 [8],
    ``frame_vector``) and ``mask`` (uint8 [512, 416]) -> float32 [512, 416, 1]. Per-view inputs are
    tensors of their own so the same definition serves Triton's ensemble inputs."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def _pipeline():
        image = fn.external_source(name="image", dtype=types.FLOAT, layout="HW", ndim=2)
        frame = fn.external_source(name="frame", dtype=types.FLOAT, ndim=1)
        mask = fn.external_source(name="mask", dtype=types.UINT8, layout="HW", ndim=2)
        flip_rows = fn.cast(frame[2:3], dtype=types.INT32)
        flip_cols = fn.cast(frame[3:4], dtype=types.INT32)
        if device_id is not None:
            image, mask = image.gpu(), mask.gpu()
        image = fn.expand_dims(image, axes=[2], new_axis_names="C") * frame[0:1] + frame[1:2]
        image = fn.flip(image, horizontal=flip_cols, vertical=flip_rows)
        resized = fn.resize(image, size=list(MODEL_SHAPE), roi_start=frame[4:6], roi_end=frame[6:8],
                            roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT)
        inside = fn.cast(fn.expand_dims(mask, axes=[2], new_axis_names="C"), dtype=types.FLOAT)
        return resized * inside + CANONICAL_BACKGROUND * (1.0 - inside)

    return _pipeline()


class MammoPreprocessor:
    """Runs the DALI pipeline on the CPU for batches of up to ``max_batch`` views; thread-safe."""

    def __init__(self, max_batch: int = 8):
        self._max_batch = max_batch
        self._pipeline = None
        self._lock = threading.Lock()

    def _built(self):  # under the lock
        if self._pipeline is None:
            self._pipeline = mammo_preprocess_pipeline(self._max_batch)
            self._pipeline.build()
        return self._pipeline

    def warm_up(self) -> None:
        """Build the pipeline now rather than on the first exam."""
        with self._lock:
            self._built()

    def __call__(self, images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        """Stored views, float32 [8] frame vectors and uint8 [512, 416] masks -> float32 [V, 1, 512, 416]."""
        out = []
        with self._lock:
            self._built()
            for start in range(0, len(images), self._max_batch):
                stop = start + self._max_batch
                self._pipeline.feed_input("image", [np.ascontiguousarray(i, np.float32) for i in images[start:stop]])
                self._pipeline.feed_input("frame", [np.ascontiguousarray(f, np.float32) for f in frames[start:stop]])
                self._pipeline.feed_input("mask", [np.ascontiguousarray(m, np.uint8) for m in masks[start:stop]])
                (batch,) = self._pipeline.run()
                out.extend(np.array(batch[i])[..., 0] for i in range(len(batch)))
        return np.stack(out)[:, None]


_shared: MammoPreprocessor | None = None


def _preprocessor() -> MammoPreprocessor:
    global _shared
    if _shared is None:
        _shared = MammoPreprocessor()
    return _shared


def preprocess_views(images: list[np.ndarray], frames: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """The serving path: DALI on the CPU, one pipeline per process. -> float32 [V, 1, 512, 416]."""
    return _preprocessor()(images, frames, masks)


def warm_up() -> None:
    """Build the serving path's pipeline before the first exam arrives."""
    _preprocessor().warm_up()
