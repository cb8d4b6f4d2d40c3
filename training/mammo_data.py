"""Training examples for the mammography models, drawn from the synth phantoms.

Each phantom view is written as DICOM, brought to its canonical frame (ingest/canonical/mammo.py,
as served) and goes through ``ingest.preprocess.mammo.preprocess_view_reference`` (the numpy twin
of the serving DALI pipeline, tested equal to it); its truth becomes targets on the classifier's
32 x 26 heatmap grid, carried into the same frame. Examples are cached under ``.cache/mammo/`` as .npy chunks (float16 views,
memory-mapped when training), keyed by size and seed range, so a rerun only trains.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom import Dataset

from ingest.canonical.mammo import MammoFrame, canonical_frame
from ingest.preprocess.mammo import MODEL_SHAPE, frame_resample_reference, preprocess_view_reference
from oncostream.settings import REPO_ROOT

VIEW_KEYS = ("LCC", "LMLO", "RCC", "RMLO")
DENSITIES = ("a", "b", "c", "d")
GRID = (MODEL_SHAPE[0] // 16, MODEL_SHAPE[1] // 16)
CACHE_DIR = REPO_ROOT / ".cache" / "mammo"
CHUNK = 100  # exams per cache file
CACHE_VERSION = "3"  # bump when the preprocessing, the targets or the vendor randomisation below change
MASK_LEVEL = 1000  # a lesion mask's stored value while it is re-expressed (linear resampling keeps 0.5 at its edge)
CELL_COVER = 0.1  # a grid cell counts as lesion when its densest 1/16 row x col sample reaches this


@dataclass
class MammoExamples:
    """V views (4 per exam, in VIEW_KEYS order) and their targets."""

    images: np.ndarray  # float16 [V, 512, 416], possibly memory-mapped
    lesion: np.ndarray  # uint8 [V, 32, 26]: cell overlaps a lesion
    malignant_map: np.ndarray  # uint8 [V, 32, 26]: cell overlaps a malignant lesion
    view_malignant: np.ndarray  # uint8 [V]
    density: np.ndarray  # int64 [V]: 0..3 = a..d (the exam's)
    exam_malignant: np.ndarray  # uint8 [V // 4]
    seeds: np.ndarray  # int64 [V // 4]

    def __len__(self) -> int:
        return len(self.view_malignant)


def cell_targets(mask: np.ndarray, frame: MammoFrame) -> np.ndarray:
    """bool [H, W] mask in the view's pixels -> uint8 [32, 26] on the model's heatmap grid."""
    resized = frame_resample_reference(mask.astype(np.float32), frame)
    cells = resized.reshape(GRID[0], 16, GRID[1], 16).max(axis=(1, 3))
    return (cells >= CELL_COVER).astype(np.uint8)


def _as_masks(datasets: list[Dataset], masks: list[np.ndarray]) -> list[Dataset]:
    """Freshly written view datasets turned into their lesion masks (0 / MASK_LEVEL), so that the
    geometric part of a vendor re-expression moves each mask exactly as it moves its image."""
    for ds, mask in zip(datasets, masks):
        ds.PixelData = (mask.astype(np.uint16) * MASK_LEVEL).tobytes()
    return datasets


def _malignant_target(phantom, key: str) -> tuple[np.ndarray, bool]:
    """The malignant lesions' pixels of one view (their boxes when a mask misses them) and whether
    the view shows one, in the view's own pixel grid."""
    laterality, view = key[0], key[1:]
    mask = phantom.lesion_masks[key]
    boxes = np.zeros_like(mask)
    for lesion_truth in phantom.truth.lesions:
        if lesion_truth.laterality != laterality or not lesion_truth.malignant:
            continue
        for lesion_view in lesion_truth.views:
            if lesion_view.view == view:
                r0, c0, r1, c1 = lesion_view.bbox_px
                boxes[max(r0, 0):r1, max(c0, 0):c1] = True
    return (mask & boxes if (mask & boxes).any() else boxes), bool(boxes.any())


def exam_examples(seed: int, size: str, randomise: bool = False) -> dict[str, np.ndarray]:
    """One phantom exam -> arrays for its 4 views (VIEW_KEYS order); ``randomise``: re-expressed first
    as a randomly drawn vendor would write it (oncostream/synth/vendors.py, domain randomisation)."""
    from oncostream.synth.mammo import VIEWS, make_mammo_phantom, mammo_datasets
    from oncostream.synth.vendors import draw_mammo_vendor

    phantom = make_mammo_phantom(seed, size=size)
    truth = phantom.truth
    written = dict(zip(VIEWS, mammo_datasets(phantom)))
    pixels = {key: phantom.views[key] for key in VIEWS}
    malignant = {key: _malignant_target(phantom, key) for key in VIEWS}
    masks = {key: phantom.lesion_masks[key] for key in VIEWS}
    malignant_masks = {key: malignant[key][0] for key in VIEWS}
    if randomise:
        draw = draw_mammo_vendor(np.random.default_rng([seed, 0xD0A1]))
        written = dict(zip(VIEWS, draw.image(list(written.values()))))
        pixels = {key: ds.pixel_array for key, ds in written.items()}
        for targets in (masks, malignant_masks):
            moved = draw.geometry(_as_masks(mammo_datasets(phantom), [targets[key] for key in VIEWS]))
            targets.update({key: ds.pixel_array >= MASK_LEVEL / 2 for key, ds in zip(VIEWS, moved)})
    images, lesion, malignant_map = [], [], []
    for key in VIEW_KEYS:
        frame = canonical_frame(written[key], pixels[key], key[0], key[1:])
        images.append(preprocess_view_reference(pixels[key], frame).astype(np.float16))
        lesion.append(cell_targets(masks[key], frame))
        malignant_map.append(cell_targets(malignant_masks[key], frame))
    return {
        "images": np.stack(images),
        "lesion": np.stack(lesion),
        "malignant_map": np.stack(malignant_map),
        "view_malignant": np.array([malignant[key][1] for key in VIEW_KEYS], np.uint8),
        "density": np.full(4, DENSITIES.index(truth.density), np.int64),
        "exam_malignant": np.array([truth.malignant], np.uint8),
        "seeds": np.array([seed], np.int64),
    }


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """Changes whenever the phantoms (judged by one reference exam) or the cached arrays' definition
    (CACHE_VERSION) change; cosmetic edits of the generator keep the cache."""
    import hashlib

    from oncostream.synth.mammo import make_mammo_phantom

    reference = make_mammo_phantom(0, size="small")
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for key in VIEW_KEYS:
        digest.update(reference.views[key].tobytes())
        digest.update(reference.lesion_masks[key].tobytes())
    digest.update(reference.truth.model_dump_json().encode())
    return digest.hexdigest()[:12]


def _chunk_dir(size: str, start: int, stop: int, randomise: bool) -> Path:
    return CACHE_DIR / fingerprint() / f"{size}_{start}_{stop}{'_vendors' if randomise else ''}"


def _build_chunk(args: tuple[str, int, int, bool]) -> Path:
    size, start, stop, randomise = args
    out = _chunk_dir(size, start, stop, randomise)
    if (out / "done").exists():
        return out
    parts = [exam_examples(seed, size, randomise) for seed in range(start, stop)]
    out.mkdir(parents=True, exist_ok=True)
    for name in parts[0]:
        np.save(out / f"{name}.npy", np.concatenate([p[name] for p in parts]))
    (out / "done").write_text("ok\n")
    return out


def build(seeds: range, size: str, workers: int = 1, randomise: bool = False) -> list[Path]:
    """Generate (or reuse) the cache chunks that cover ``seeds``; returns their folders. Training sets
    pass ``randomise`` (vendor re-expressions); validation and calibration sets keep the generator's."""
    chunks = [(size, s, min(s + CHUNK, seeds.stop), randomise) for s in range(seeds.start, seeds.stop, CHUNK)]
    if workers <= 1:
        return [_build_chunk(c) for c in chunks]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_build_chunk, chunks))


def load(folders: list[Path]) -> MammoExamples:
    """Concatenate cached chunks; views stay memory-mapped (a few GB for thousands of exams)."""
    def cat(name: str, mmap: bool = False) -> np.ndarray:
        arrays = [np.load(f / f"{name}.npy", mmap_mode="r" if mmap else None) for f in folders]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    images = [np.load(f / "images.npy", mmap_mode="r") for f in folders]
    return MammoExamples(
        images=_ChunkedViews(images),  # type: ignore[arg-type]
        lesion=cat("lesion"), malignant_map=cat("malignant_map"), view_malignant=cat("view_malignant"),
        density=cat("density"), exam_malignant=cat("exam_malignant"), seeds=cat("seeds"),
    )


class _ChunkedViews:
    """Index-addressable view of several memory-mapped chunks, without copying them together."""

    def __init__(self, chunks: list[np.ndarray]):
        self._chunks = chunks
        self._offsets = np.cumsum([0] + [len(c) for c in chunks])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def take(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *MODEL_SHAPE), np.float32)
        for k, i in enumerate(indices):
            c = int(np.searchsorted(self._offsets, i, side="right") - 1)
            out[k] = self._chunks[c][i - self._offsets[c]]
        return out


def default_workers() -> int:
    return max(1, min(2, (os.cpu_count() or 1)))
