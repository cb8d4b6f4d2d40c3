"""Mammography preprocessing, the one definition shared by serving and training.

Every view becomes a float32 [512, 416] image: stored value / (2**BitsStored - 1), flipped left-right
for right-breast views so the chest wall is on the same side (left) for L and R, and resized with an
antialiased linear (triangle) filter whose borders clamp to the edge, as DALI's ``fn.resize`` does.

Two realisations compute the same numbers: ``mammo_preprocess_pipeline`` (a DALI pipeline definition,
built with ``device_id=None`` here and unchanged on a GPU) serves; ``preprocess_view_reference`` (numpy)
is what training uses, because the training environment needs no DALI. tests/unit/test_mammo_steps.py
checks that both agree.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

MODEL_HEIGHT = 512
MODEL_WIDTH = 416
# Rows then columns of the model input; the classifier's heatmap has stride 16 on this grid.
MODEL_SHAPE = (MODEL_HEIGHT, MODEL_WIDTH)
# The synthetic views (oncostream.synth.mammo) and the usual DICOM display put the left breast's
# chest wall on the image's left edge and the right breast's on the right edge; R views are mirrored.
FLIPPED_LATERALITY = "R"


def needs_flip(laterality: str) -> bool:
    """Whether a view is mirrored left-right so its chest wall lands on the model's left edge."""
    return laterality.upper() == FLIPPED_LATERALITY


@lru_cache(maxsize=32)
def _resampling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i holds the weights of output sample i: a triangle of radius max(scale, 1) input pixels
    centred on the output pixel's centre, indices outside the image clamped to the edge."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        taps = np.arange(int(np.floor(centre - support)), int(np.ceil(centre + support)) + 1)
        weights = np.maximum(0.0, 1.0 - np.abs((taps + 0.5 - centre) / support))
        np.add.at(matrix[i], np.clip(taps, 0, n_in - 1), weights / weights.sum())
    matrix.setflags(write=False)
    return matrix


def resize_reference(image: np.ndarray, shape: tuple[int, int] = MODEL_SHAPE) -> np.ndarray:
    """numpy equivalent of DALI's CPU ``fn.resize(interp_type=INTERP_LINEAR, antialias=True)``."""
    rows = _resampling_matrix(image.shape[0], shape[0])
    cols = _resampling_matrix(image.shape[1], shape[1])
    return (rows @ image.astype(np.float64) @ cols.T).astype(np.float32)


def preprocess_view_reference(image: np.ndarray, max_value: float, laterality: str) -> np.ndarray:
    """One view -> float32 [512, 416] model input (numpy; the training path)."""
    scaled = np.asarray(image, np.float32) * np.float32(1.0 / max_value)
    if needs_flip(laterality):
        scaled = scaled[:, ::-1]
    return resize_reference(scaled)


def mammo_preprocess_pipeline(batch_size: int, num_threads: int = 1, device_id: int | None = None):
    """DALI pipeline: external sources ``image`` (float32 HW), ``scale`` (float32 [1], 1 / max value)
    and ``flip`` (int32 [1], 1 for views to mirror) -> float32 [512, 416, 1]. Per-view inputs are
    1-element tensors so the same definition serves Triton's ``[-1, 1]`` ensemble inputs."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    def _pipeline():
        image = fn.external_source(name="image", dtype=types.FLOAT, layout="HW", ndim=2)
        scale = fn.external_source(name="scale", dtype=types.FLOAT, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=1)
        if device_id is not None:
            image = image.gpu()
        image = fn.expand_dims(image, axes=[2], new_axis_names="C") * scale
        image = fn.flip(image, horizontal=flip)
        return fn.resize(image, size=list(MODEL_SHAPE), interp_type=types.INTERP_LINEAR, antialias=True,
                         dtype=types.FLOAT)

    return _pipeline()


class MammoPreprocessor:
    """Runs the DALI pipeline on the CPU for batches of up to ``max_batch`` views; thread-safe."""

    def __init__(self, max_batch: int = 8):
        self._max_batch = max_batch
        self._pipeline = None
        self._lock = threading.Lock()

    def __call__(self, images: list[np.ndarray], lateralities: list[str], max_values: list[float]) -> np.ndarray:
        """-> float32 [V, 1, 512, 416]."""
        out = []
        with self._lock:
            if self._pipeline is None:
                self._pipeline = mammo_preprocess_pipeline(self._max_batch)
                self._pipeline.build()
            for start in range(0, len(images), self._max_batch):
                stop = start + self._max_batch
                self._pipeline.feed_input("image", [np.ascontiguousarray(i, np.float32) for i in images[start:stop]])
                self._pipeline.feed_input("scale", [np.array([1.0 / m], np.float32) for m in max_values[start:stop]])
                self._pipeline.feed_input("flip", [np.array([needs_flip(lat)], np.int32)
                                                   for lat in lateralities[start:stop]])
                (batch,) = self._pipeline.run()
                out.extend(np.array(batch[i])[..., 0] for i in range(len(batch)))
        return np.stack(out)[:, None]


_shared: MammoPreprocessor | None = None


def preprocess_views(images: list[np.ndarray], lateralities: list[str], max_values: list[float]) -> np.ndarray:
    """The serving path: DALI on the CPU, one pipeline per process. -> float32 [V, 1, 512, 416]."""
    global _shared
    if _shared is None:
        _shared = MammoPreprocessor()
    return _shared(images, lateralities, max_values)
