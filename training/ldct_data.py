"""Training data for the LDCT models, drawn from the shared phantom generator (oncostream.synth.ldct).

Each phantom seed becomes one cached ``.npz`` (under ``.cache/ldct/``) holding what the three models
train on, already through the serving preprocessing's numpy realisation (ingest.preprocess.ldct):

- denoise: 128x128 crops of axial slices as HU / 1000: the 25 % dose input, the noiseless target and
  the full-dose slice (for reference only);
- detector: the series on the 2 mm grid, windowed, for three noise levels (noiseless, full dose,
  25 % dose: the denoiser's output lies between them), plus nodule centres (2 mm grid voxels) and
  mean diameters;
- segmenter: 64 mm cubes at 1 mm around every nodule and around nodule-free lung points
  (vessel crossings first, the look-alikes), windowed, with the soft mask of the centred nodule;
  training crops random 48 mm cubes from them, which equals re-centring the patch by whole mm.

Seeds (never the evaluation's 1,000,000+): see ``TRAIN_SEEDS`` / ``VALIDATION_SEEDS``. The training
phantoms carry up to five nodules each (two draws of the generator's own nodule distribution; up to
eight for ``DENSE_SEEDS``) so that fewer, slow full-size phantoms hold enough nodules;
validation phantoms keep the natural draw.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ingest.canonical import ct_texture
from ingest.preprocess import ldct as pre
from oncostream.synth import ldct as synth
from oncostream.synth.vendors import average_slices, draw_ct_vendor

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "ldct"
# (size, seeds): full-size phantoms take ~8 s each on this machine (two builders at once), small
# ones ~0.5 s. Screening serves full-size series, so most training nodules come from full-size
# phantoms: the small ones' 2.65 mm pixels blur the margins malignancy rests on.
TRAIN_SEEDS = {"full": range(0, 500), "small": range(10_000, 10_160)}
VALIDATION_SEEDS = {"full": range(90_000, 90_060), "small": range(90_100, 90_140)}
BIG_PATCH = 64
DENOISE_CROP = 128
DENOISE_CROPS = 12
NEGATIVES_PER_PHANTOM = 6
VERSION = 4  # 3: training items from vendor-randomised reconstructions; 4: kernel texture harmonised


# These training seeds carry up to eight nodules (four draws): the malignancy head learns from
# nodules, and a phantom's cost is its anatomy and projections, not its nodules. The other training
# seeds keep their two draws (and their cached items).
DENSE_SEEDS = range(300, 500)


def enriched_specs(seed: int) -> list[dict]:
    """The nodules of an enriched (training) phantom: two draws of the generator's distribution (up
    to five nodules), four (up to eight) for ``DENSE_SEEDS``."""
    rng = np.random.default_rng([seed, 0x7EA1])
    draws, cap = (4, 8) if seed in DENSE_SEEDS else (2, 5)
    return synth.pooled_nodule_specs(rng, draws, cap)


def phantom_for(seed: int, size: str, enriched: bool):
    """The phantom for a seed; ``enriched`` adds a second draw of the generator's nodule distribution."""
    if not enriched:
        return synth.make_ldct_phantom(seed, size=size)
    return synth.make_ldct_phantom(seed, size=size, nodules=enriched_specs(seed))


def training_margins(seed: int, diameters: np.ndarray) -> np.ndarray:
    """Margin class (index into synth.MARGINS) of each nodule of a cached training item, replayed
    from its nodule draw (no volume is made; items cached before margins were kept lack them);
    -1 for all when the replayed diameters do not match the item's."""
    specs = enriched_specs(seed)
    if len(specs) != len(diameters) or not np.allclose([s["diameter_mm"] for s in specs], diameters, atol=0.01):
        return np.full(len(diameters), -1, np.int64)
    return np.array([synth.MARGINS.index(s["margin"]) for s in specs], np.int64)


def nodule_index(phantom, center_mm) -> np.ndarray:
    """Truth centre (LPS x, y, z mm) -> source voxel index (z, y, x); the phantoms are axial, identity-oriented."""
    x, y, z = center_mm
    ox, oy, oz = phantom.origin_mm
    dz, dy, dx = phantom.spacing_mm
    return np.array([(z - oz) / dz, (y - oy) / dy, (x - ox) / dx], np.float64)


def _big_patch(volume: np.ndarray, spacing, center: np.ndarray) -> np.ndarray:
    """A 64 mm cube at 1 mm (HU, not windowed) centred on a source voxel index."""
    half = BIG_PATCH / 2.0 / np.asarray(spacing, np.float64)
    c = center + 0.5
    grid = pre.ResampleGrid(c - half, c + half, (BIG_PATCH,) * 3)
    return pre.resample_reference(volume, grid)


def _negative_centres(phantom, centres: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Lung points far from every nodule: mostly bright (vessel) voxels, some anywhere in lung."""
    clean = phantom.hu_clean
    spacing = np.asarray(phantom.spacing_mm)
    step = max(1, int(round(2.0 / spacing[1])))
    sub = clean[:, ::step, ::step]
    lungish = (sub > -950) & (sub < -700)
    bright = sub > -300
    # bright voxels with lung around them: vessels and nodule look-alikes inside the lungs
    lung_near = ndimage.uniform_filter(lungish.astype(np.float32), size=5) > 0.5
    pools = [np.argwhere(bright & lung_near), np.argwhere(lungish)]
    out: list[np.ndarray] = []
    wanted = (NEGATIVES_PER_PHANTOM * 2 // 3, NEGATIVES_PER_PHANTOM - NEGATIVES_PER_PHANTOM * 2 // 3)
    for pool, count in zip(pools, wanted):
        found, tries = 0, 0
        while len(pool) and found < count and tries < count * 20:
            tries += 1
            idx = pool[rng.integers(len(pool))].astype(np.float64)
            idx[1:] *= step
            if all(np.linalg.norm((idx - c) * spacing) > 35.0 for c in centres):
                out.append(idx)
                found += 1
    return out


@dataclass
class _Reconstruction:
    """A phantom as one reconstruction of its scan: the generator's own, or a vendor draw's (thicker
    slices, another kernel) applied to every volume alike, then brought to the training texture as
    serving does (the filter measured on the low-dose volume, ingest/canonical/ct_texture.py, applied
    to all three); labels become one soft mask per nodule."""

    hu_clean: np.ndarray
    hu_full: np.ndarray
    hu_low: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    truth: object
    _labels: np.ndarray
    _draw: object | None

    @classmethod
    def of(cls, phantom, draw) -> _Reconstruction:
        if draw is None:
            return cls(phantom.hu_clean, phantom.hu_full, phantom.hu_low, phantom.spacing_mm, phantom.origin_mm,
                       phantom.truth, phantom.labels, None)
        pixel = float(phantom.spacing_mm[1])
        spacing, origin = draw.spacing_and_origin(phantom.spacing_mm, phantom.origin_mm)
        low = draw.volume(phantom.hu_low, pixel)
        texture = ct_texture.measure(low, pixel)
        volumes = [ct_texture.apply(v, pixel, texture)
                   for v in (draw.volume(phantom.hu_clean, pixel), draw.volume(phantom.hu_full, pixel), low)]
        return cls(*volumes, spacing, origin, phantom.truth, phantom.labels, draw)

    def nodule_mask(self, label: int) -> np.ndarray:
        mask = (self._labels == label).astype(np.float32)
        if self._draw is not None and self._draw.slice_factor > 1:
            mask = average_slices(mask, self._draw.slice_factor)
        return mask


def build_item(seed: int, size: str, enriched: bool, randomise: bool = False) -> dict[str, np.ndarray]:
    """Everything the three models need from one phantom, as arrays; ``randomise``: from a randomly
    drawn vendor reconstruction (oncostream/synth/vendors.py, domain randomisation) instead."""
    generated = phantom_for(seed, size, enriched)
    draw = draw_ct_vendor(np.random.default_rng([seed, 0xC7]), generated.spacing_mm[0]) if randomise else None
    phantom = _Reconstruction.of(generated, draw)
    rng = np.random.default_rng([seed, 0x5EED])
    spacing = np.asarray(phantom.spacing_mm, np.float64)
    item: dict[str, np.ndarray] = {"spacing": spacing.astype(np.float32)}

    # denoise crops, from slices that cross the body
    d, h, w = phantom.hu_low.shape
    crop = min(DENOISE_CROP, h)
    lows, cleans, fulls = [], [], []
    for _ in range(DENOISE_CROPS):
        k = int(rng.integers(d))
        y0 = int(rng.integers(0, h - crop + 1)) & ~1
        x0 = int(rng.integers(0, w - crop + 1)) & ~1
        sl = (k, slice(y0, y0 + crop), slice(x0, x0 + crop))
        lows.append(pre.denoise_input_reference(phantom.hu_low[sl]))
        cleans.append(pre.denoise_input_reference(phantom.hu_clean[sl]))
        fulls.append(pre.denoise_input_reference(phantom.hu_full[sl]))
    item["den_low"], item["den_clean"], item["den_full"] = np.stack(lows), np.stack(cleans), np.stack(fulls)

    # detector volumes and targets
    grid = pre.detector_grid(phantom.hu_low.shape, spacing)
    for name, vol in (("clean", phantom.hu_clean), ("full", phantom.hu_full), ("low", phantom.hu_low)):
        item[f"det_{name}"] = pre.window(pre.resample_reference(vol, grid)).astype(np.float16)
    nodules = phantom.truth.nodules
    centres = [nodule_index(phantom, n.center_mm) for n in nodules]
    det_centres = [(c + 0.5 - grid.roi_start) / grid.step - 0.5 for c in centres]
    item["det_centres"] = np.asarray(det_centres, np.float32).reshape(-1, 3)
    item["diameters"] = np.asarray([n.diameter_mm for n in nodules], np.float32)
    item["volumes"] = np.asarray([n.volume_mm3 for n in nodules], np.float32)
    item["malignant"] = np.asarray([n.malignant for n in nodules], np.float32)
    item["composition"] = np.asarray([synth.COMPOSITIONS.index(n.composition) for n in nodules], np.int64)

    # segmenter cubes: positives (one per nodule) then negatives
    patch_centres = list(centres) + _negative_centres(phantom, centres, rng)
    n_pos = len(centres)
    cubes = {name: [] for name in ("clean", "full", "low")}
    masks = []
    for j, c in enumerate(patch_centres):
        for name, vol in (("clean", phantom.hu_clean), ("full", phantom.hu_full), ("low", phantom.hu_low)):
            cubes[name].append(pre.window(_big_patch(vol, spacing, c)).astype(np.float16))
        if j < n_pos:
            label = phantom.nodule_mask(j + 1)
            masks.append(np.clip(_big_patch(label, spacing, c) * 255.0 + 0.5, 0, 255).astype(np.uint8))
        else:
            masks.append(np.zeros((BIG_PATCH,) * 3, np.uint8))
    for name, values in cubes.items():
        item[f"seg_{name}"] = np.stack(values) if values else np.zeros((0,) + (BIG_PATCH,) * 3, np.float16)
    item["seg_mask"] = np.stack(masks) if masks else np.zeros((0,) + (BIG_PATCH,) * 3, np.uint8)
    item["seg_positive"] = np.arange(len(patch_centres)) < n_pos
    return item


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """Changes whenever the phantoms or the preprocessing change (judged by one small reference
    phantom and its detector input) or the cached arrays' definition does (VERSION); cosmetic edits
    of the generator keep the cache."""
    reference = synth.make_ldct_phantom(0, size="small")
    digest = hashlib.sha256(str(VERSION).encode())
    for array in (reference.hu_clean, reference.hu_full, reference.hu_low, reference.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(reference.truth.model_dump_json().encode())
    spacing = np.asarray(reference.spacing_mm, np.float64)
    grid = pre.detector_grid(reference.hu_low.shape, spacing)
    digest.update(pre.window(pre.resample_reference(reference.hu_low, grid)).astype(np.float32).tobytes())
    return digest.hexdigest()[:10]


def cache_path(seed: int, size: str) -> Path:
    return CACHE_DIR / f"v{VERSION}-{fingerprint()}-{size}-{seed}.npz"


def ensure_cached(seed: int, size: str, enriched: bool) -> Path:
    """Build the cached item for a seed once; later runs (and ``make models``) reuse it. Training
    items (``enriched``) come from vendor-randomised reconstructions; validation ones do not."""
    path = cache_path(seed, size)
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        item = build_item(seed, size, enriched, randomise=enriched)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **item)
        tmp.replace(path)
    return path


def load(paths: list[Path], prefixes: tuple[str, ...] = ("",)) -> list[dict[str, np.ndarray]]:
    """Cached items, only the arrays whose names start with one of ``prefixes`` (memory)."""
    out = []
    for path in paths:
        with np.load(path) as data:
            out.append({k: data[k] for k in data.files if k.startswith(prefixes)})
    return out


def build_all(split: str = "train", sizes: tuple[str, ...] = ("full", "small"), shard: tuple[int, int] = (0, 1)) -> list[Path]:
    """Cache every seed of a split (train: enriched nodules; validation: the natural draw); paths in
    the order of ``TRAIN_SEEDS`` / ``VALIDATION_SEEDS`` (full first), the order ``--cached-only``
    loads them in, so both paths train on the same item order. ``shard`` (i, n): only every n-th seed
    from the i-th, so that n builders can share the work (each item is its own file)."""
    seeds = TRAIN_SEEDS if split == "train" else VALIDATION_SEEDS
    index, count = shard
    paths = []
    for size in sizes:
        for seed in seeds[size][index::count]:
            start = time.time()
            paths.append(ensure_cached(seed, size, enriched=split == "train"))
            print(json.dumps({"split": split, "size": size, "seed": seed, "s": round(time.time() - start, 1)}),
                  flush=True)
    return paths


if __name__ == "__main__":
    # arguments: [--shard I/N] split[:size] ..., e.g. "--shard 0/2 train:full validation:small";
    # default: everything. Two builders (--shard 0/2 and 1/2) use both cores of a 2-core machine.
    args = sys.argv[1:]
    shard = (0, 1)
    if args[:1] == ["--shard"]:
        index, _, count = args[1].partition("/")
        shard, args = (int(index), int(count)), args[2:]
    for arg in args or ["train", "validation"]:
        split, _, size = arg.partition(":")
        build_all(split, (size,) if size else ("full", "small"), shard)
