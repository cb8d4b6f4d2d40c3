"""CT reconstruction-kernel harmonisation: the noise texture the LDCT models were trained on.

A lung (sharp) kernel and a soft-tissue (smooth) kernel reconstruct the same scan with different noise
texture and edge sharpness. The models learnt one texture, so a sharper series makes noise look like
small nodules and a smoother one blurs the margins the malignancy estimate reads. The kernel's name
(ConvolutionKernel) is vendor-specific and says nothing measurable, so the texture is measured from
the pixels instead: the noise power spectrum (NPS) of detrended 16 mm tiles of homogeneous soft tissue
(every pixel within [-200, 200] HU) on slice pairs spread over the series, summarised as the ratio of
power at 0.20-0.35 cycles/mm to power at 0.10-0.20 cycles/mm. The tiles are differences of adjacent
slices, so the anatomy (which changes little over a slice) cancels and the noise of both slices
remains: the ratio does not depend on the patient, the noise level (dose) or, being in cycles/mm, on
the pixel spacing. (A series reconstructed with heavily overlapping slices correlates adjacent
slices' noise; the difference then keeps less of it, and fewer tiles pass.)

A series whose ratio lies above what the models' own training reconstructions show is smoothed
in-plane by the Gaussian that brings its measured NPS to the training median; one far below it is
sharpened by the unsharp mask that does the same. Within the tolerated range (every default
synthetic reconstruction, and their thicker-slice or finer-pixel resamplings) nothing is changed.
Serving applies it to the canonical volume before the models (ingest/ldct.py), which logs what was
measured and done; a texture the strongest filter cannot bring into the tolerated range asks for a
reader's review.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from ingest.preprocess.ldct import DENOISE_HU_MAX, DENOISE_HU_MIN

TILE_MM = 16.0
TISSUE_HU = (-200.0, 200.0)
SLICES_SAMPLED = 24
LOW_BAND = (0.10, 0.20)  # cycles/mm
HIGH_BAND = (0.20, 0.35)
MIN_TILES = 50  # fewer homogeneous tiles than this: the texture is not measured, nothing is changed
# band ratio of the models' training reconstructions: 40 default full-size phantoms (seeds
# 10000-10039) gave 0.895-0.976, median 0.94. A series is filtered only outside TOLERATED (that range
# widened so that resampling alone, 2.5 mm slices 0.84-0.90 or 0.6 mm pixels 0.82-0.85, changes
# nothing), and then to TARGET; a sharper kernel (unsharp 0.6 over 0.7 mm) reads 1.14-1.20 and a
# smoother one (Gaussian 0.8 mm) 0.37-0.39
TRAINING_RATIO = (0.895, 0.976)
TOLERATED = (0.75, 1.07)
TARGET = 0.94
MAX_SMOOTH_SIGMA_MM = 2.0
MAX_SHARPEN_SIGMA_MM = 1.0  # with the gain capped at 4 the ratio rises monotonically only up to ~1 mm
MAX_SHARPEN_GAIN = 4.0  # the inverse Gaussian's gain is capped: it would amplify noise without bound
BISECTIONS = 10  # the filter's sigma to 2 mm / 2**10


@dataclass(frozen=True)
class Texture:
    """A series' measured noise texture and the harmonising filter chosen for it."""

    band_ratio: float | None  # None: too few homogeneous tiles to measure
    tiles: int
    smooth_sigma_mm: float = 0.0  # > 0: Gaussian applied (the series was sharper than training)
    sharpen_sigma_mm: float = 0.0  # > 0: inverse Gaussian applied, gain capped (the series was smoother)
    out_of_range: bool = False  # even the strongest filter leaves it outside the training range

    @property
    def changed(self) -> bool:
        return self.smooth_sigma_mm > 0 or self.sharpen_sigma_mm > 0

    def describe(self) -> str:
        if self.band_ratio is None:
            return f"not measured ({self.tiles} homogeneous tiles)"
        applied = (f"smoothed, Gaussian {self.smooth_sigma_mm:.2f} mm" if self.smooth_sigma_mm else
                   f"sharpened, inverse Gaussian {self.sharpen_sigma_mm:.2f} mm" if self.sharpen_sigma_mm else
                   "unchanged")
        return f"NPS band ratio {self.band_ratio:.3f} (training {TRAINING_RATIO[0]}-{TRAINING_RATIO[1]}): {applied}"

    def review_reason(self) -> str | None:
        """Why a reader must look: a texture no filter here brings to what the models were trained on."""
        if not self.out_of_range:
            return None
        return (f"reconstruction kernel's noise texture outside what the models were validated on ({self.describe()}); "
                "findings may be missed or spurious")


def _slice_pairs(volume_hu: np.ndarray) -> np.ndarray:
    """Pairs of adjacent slices spread over the series, float32 [P, 2, H, W]."""
    firsts = np.unique(np.linspace(0, len(volume_hu) - 2, SLICES_SAMPLED).astype(int))
    return np.stack([np.asarray(volume_hu[k:k + 2], np.float32) for k in firsts])


def _blocks(planes: np.ndarray, t: int) -> np.ndarray:
    """[P, 2, H, W] -> [P, 2, B, t, t]: each plane cut into t x t tiles (the remainder dropped)."""
    p, _, rows, cols = planes.shape
    cut = planes[..., :rows - rows % t, :cols - cols % t]
    return cut.reshape(p, 2, rows // t, t, cols // t, t).swapaxes(3, 4).reshape(p, 2, -1, t, t)


def _tile_size(pixel_mm: float) -> int:
    return max(8, int(round(TILE_MM / pixel_mm)))


def _homogeneous(pairs: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Which tiles of the pairs hold soft tissue only, in both slices: bool [P, B]."""
    blocks = _blocks(pairs, _tile_size(pixel_mm))
    return (blocks.min(axis=(1, 3, 4)) >= TISSUE_HU[0]) & (blocks.max(axis=(1, 3, 4)) <= TISSUE_HU[1])


def _band_ratio(pairs: np.ndarray, selected: np.ndarray, pixel_mm: float) -> float:
    """Band ratio of the NPS of the selected tiles' slice differences (the anatomy cancels, the noise
    of both slices remains), each detrended by its best plane and Hann-windowed."""
    t = _tile_size(pixel_mm)
    blocks = _blocks(pairs, t)
    tiles = (blocks[:, 1] - blocks[:, 0])[selected].astype(np.float64)
    yy, xx = np.mgrid[0:t, 0:t]
    design = np.stack([np.ones(t * t), yy.ravel(), xx.ravel()], axis=1)
    flat = tiles.reshape(len(tiles), -1)
    detrended = (flat - flat @ np.linalg.pinv(design).T @ design.T).reshape(tiles.shape)
    window = np.outer(np.hanning(t), np.hanning(t))
    power = (np.abs(np.fft.fft2(detrended * window)) ** 2).mean(axis=0)
    f = np.fft.fftfreq(t, pixel_mm)
    freq = np.hypot(f[:, None], f[None, :])
    low = power[(freq >= LOW_BAND[0]) & (freq < LOW_BAND[1])].sum()
    high = power[(freq >= HIGH_BAND[0]) & (freq < HIGH_BAND[1])].sum()
    return float(high / low) if low > 0 else float("nan")


def _filter(planes: np.ndarray, pixel_mm: float, smooth_sigma_mm: float, sharpen_sigma_mm: float) -> np.ndarray:
    """In-plane Gaussian (smoothing) or capped inverse Gaussian (sharpening) of [..., H, W] planes."""
    if smooth_sigma_mm:
        sigma_px = smooth_sigma_mm / pixel_mm
        return ndimage.gaussian_filter(planes, [0.0] * (planes.ndim - 2) + [sigma_px] * 2)
    rows, cols = planes.shape[-2:]
    freq = np.hypot(*np.meshgrid(fft.fftfreq(rows, pixel_mm), fft.rfftfreq(cols, pixel_mm), indexing="ij"))
    gain = np.minimum(np.exp(2.0 * (np.pi * sharpen_sigma_mm * freq) ** 2), MAX_SHARPEN_GAIN).astype(np.float32)
    return fft.irfft2(fft.rfft2(planes) * gain, s=(rows, cols)).astype(np.float32)


def _texture(ratio: float | None, tiles: int, signed_sigma_mm: float = 0.0, out_of_range: bool = False) -> Texture:
    return Texture(ratio, tiles, smooth_sigma_mm=max(signed_sigma_mm, 0.0),
                   sharpen_sigma_mm=max(-signed_sigma_mm, 0.0), out_of_range=out_of_range)


def measure(volume_hu: np.ndarray, pixel_mm: float) -> Texture:
    """The series' band ratio and, outside the tolerated range, the filter that brings it to the
    training median: found by bisection on the ratio measured on the filtered slice pairs themselves
    (a 16 mm tile's spectrum is too coarse to predict a filter's effect from it)."""
    if 1.0 / (2.0 * pixel_mm) < HIGH_BAND[1] or len(volume_hu) < 2:  # pixels too coarse for the high band
        return _texture(None, 0)
    pairs = np.clip(_slice_pairs(volume_hu), DENOISE_HU_MIN, DENOISE_HU_MAX)
    selected = _homogeneous(pairs, pixel_mm)
    tiles = int(selected.sum())
    if tiles < MIN_TILES:
        return _texture(None, tiles)
    ratio = _band_ratio(pairs, selected, pixel_mm)
    if not np.isfinite(ratio):  # no noise at all in the low band (a noiseless volume): nothing to match
        return _texture(None, tiles)
    if TOLERATED[0] <= ratio <= TOLERATED[1]:
        return _texture(ratio, tiles)
    limit = MAX_SMOOTH_SIGMA_MM if ratio > TOLERATED[1] else -MAX_SHARPEN_SIGMA_MM

    def filtered_ratio(signed_sigma: float) -> float:
        planes = _filter(pairs, pixel_mm, max(signed_sigma, 0.0), max(-signed_sigma, 0.0))
        return _band_ratio(planes, selected, pixel_mm)

    at_limit = filtered_ratio(limit)
    if not TOLERATED[0] <= at_limit <= TOLERATED[1] and (at_limit - TARGET) * (ratio - TARGET) > 0:
        return _texture(ratio, tiles, limit, out_of_range=True)
    lo, hi = 0.0, limit  # the ratio changes monotonically from 0 to the limit: bisect on its sign
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        if (filtered_ratio(mid) - TARGET) * (ratio - TARGET) > 0:
            lo = mid
        else:
            hi = mid
    return _texture(ratio, tiles, (lo + hi) / 2)


def apply(volume_hu: np.ndarray, pixel_mm: float, texture: Texture) -> np.ndarray:
    """``texture``'s filter applied in-plane (the same array when it changes nothing). The volume is
    first clamped to the models' HU range, so that padding far below air (-3024) does not ring."""
    if not texture.changed:
        return volume_hu
    out = np.clip(np.asarray(volume_hu, np.float32), DENOISE_HU_MIN, DENOISE_HU_MAX)
    for start in range(0, len(out), 16):  # in place, 16 slices at a time (an in-plane filter): one copy
        out[start:start + 16] = _filter(out[start:start + 16], pixel_mm, texture.smooth_sigma_mm,
                                        texture.sharpen_sigma_mm)
    return out


def harmonise(volume_hu: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, Texture]:
    """The volume brought to the training texture, and what was measured and done."""
    texture = measure(volume_hu, pixel_mm)
    return apply(volume_hu, pixel_mm, texture), texture
