"""Low-dose chest CT phantoms: thorax anatomy, lung nodules with known truth, projection-domain noise.

The anatomy is drawn in patient coordinates (DICOM LPS, mm) so that truth centres, DICOM geometry and
voxel indices all agree: voxel [k, i, j] lies at origin + (j * column spacing, i * row spacing,
k * slice spacing) in (x, y, z), rows run anterior -> posterior, columns right -> left of the patient,
slices inferior -> superior (ImageOrientationPatient 1\\0\\0\\0\\1\\0).

Dose is simulated where it acts, in the projection domain: the clean phantom is forward projected
(parallel beam), photon counts are drawn from Poisson laws (the ``dose_fraction`` counts are a Poisson
split of the full-dose counts: a real dose reduction keeps a subset of the same photons), and the
filtered back projection of each log-count difference is added to the clean image. Noise therefore
follows the anatomy: stronger behind the spine and across the widest diameter, weaker in the lungs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.sparse as sparse
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage
from scipy import fft as sp_fft
from scipy import ndimage

from oncostream.synth.dicom import base_dataset, synth_uid
from oncostream.synth.ground_truth import LdctTruth, NoduleTruth

_KIND = "ldct"
_MU_WATER_PER_MM = 0.0193  # linear attenuation of water near 70 keV effective energy, 1/mm
_STORED_OFFSET = 1024  # stored value = HU + 1024 (RescaleIntercept -1024)

# size -> (matrix, pixel spacing mm, slice spacing mm, slices, noise grid, projection angles)
_SIZES = {
    "full": (512, 0.70, 1.25, 160, 256, 160),
    "small": (128, 2.65, 2.5, 48, 128, 96),
}
# unattenuated photons per mm^2 of detector over one rotation at full dose; sets the full-dose noise
# (about 12 HU in the mediastinum at 0.7 mm x 1.25 mm); a 25 % series has about twice that
_PHOTONS_PER_MM2 = 5.3e7

COMPOSITIONS = ("solid", "part_solid", "ground_glass", "calcified")
MARGINS = ("smooth", "lobulated", "spiculated")


@dataclass
class LdctPhantom:
    """One synthetic LDCT series: the clean, full-dose and low-dose volumes, labels and truth."""

    hu_full: np.ndarray  # float32 [D, H, W] full-dose HU (full-dose quantum noise included)
    hu_low: np.ndarray  # float32 [D, H, W] same anatomy at dose_fraction
    spacing_mm: tuple[float, float, float]  # (slice, row, column) spacing
    origin_mm: tuple[float, float, float]  # LPS (x, y, z) of voxel [0, 0, 0]
    labels: np.ndarray  # int16 [D, H, W]: 0 background, k = truth.nodules[k-1]
    truth: LdctTruth
    hu_clean: np.ndarray | None = field(repr=False, default=None)  # float32 [D, H, W] noiseless phantom
    size: str = "full"
    # the nodules as drawn, in the patient's body frame (the first round's patient coordinates), with
    # their specs: what a later screening round of the same patient grows, keeps or resolves
    nodule_shapes: list = field(repr=False, default_factory=list)
    nodule_specs: list[dict] = field(repr=False, default_factory=list)


# ---------------------------------------------------------------------------------------------
# geometry helpers


def _soft(signed_distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Partial-volume occupancy from a signed distance (negative inside): a one-voxel linear ramp."""
    return np.clip(0.5 - signed_distance_mm / edge_mm, 0.0, 1.0, dtype=np.float32)


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse: (normalised radius - 1) * min axis."""
    if ax <= 0 or ay <= 0:
        return np.full(np.broadcast(x, y).shape, 1e3, dtype=np.float32)
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return ((r - 1.0) * min(ax, ay)).astype(np.float32)


@dataclass
class _Tube:
    a: np.ndarray  # (x, y, z) mm
    b: np.ndarray
    radius: float
    hu: float


def _render_tube(vol: np.ndarray, tube: _Tube, grid: "_Grid", blend_mask: np.ndarray | None = None,
                 occ_out: np.ndarray | None = None) -> None:
    """Blend a cylinder with rounded ends into ``vol`` (HU) by partial-volume occupancy."""
    lo = np.minimum(tube.a, tube.b) - tube.radius - 2 * grid.edge
    hi = np.maximum(tube.a, tube.b) + tube.radius + 2 * grid.edge
    sl = grid.index_box(lo, hi)
    if sl is None:
        return
    z, y, x = grid.coords(sl)
    ab = tube.b - tube.a
    denom = float(ab @ ab) or 1e-9
    t = ((x - tube.a[0]) * ab[0] + (y - tube.a[1]) * ab[1] + (z - tube.a[2]) * ab[2]) / denom
    t = np.clip(t, 0.0, 1.0)
    d = np.sqrt((x - tube.a[0] - t * ab[0]) ** 2 + (y - tube.a[1] - t * ab[1]) ** 2
                + (z - tube.a[2] - t * ab[2]) ** 2)
    occ = _soft(d - tube.radius, grid.edge)
    if blend_mask is not None:
        occ = occ * blend_mask[sl]
    sub = vol[sl]
    sub += occ * (tube.hu - sub)
    if occ_out is not None:
        np.maximum(occ_out[sl], occ, out=occ_out[sl])


@dataclass
class _Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (z, y, x)
    origin: tuple[float, float, float]  # (x, y, z) LPS

    def __post_init__(self) -> None:
        self.edge = float(np.mean(self.spacing))  # partial-volume ramp width, mm

    def index_box(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices (k, i, j) covering the mm box, or None when it misses the volume."""
        out = []
        for axis_xyz, axis_kij in ((2, 0), (1, 1), (0, 2)):
            a = int(np.floor((lo_xyz[axis_xyz] - self.origin[axis_xyz]) / self.spacing[axis_kij]))
            b = int(np.ceil((hi_xyz[axis_xyz] - self.origin[axis_xyz]) / self.spacing[axis_kij])) + 1
            a, b = max(a, 0), min(b, self.shape[axis_kij])
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) mm coordinates of the voxels in ``sl``."""
        k = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)
        i = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)
        j = np.arange(sl[2].start, sl[2].stop, dtype=np.float32)
        z = (self.origin[2] + k * self.spacing[0])[:, None, None]
        y = (self.origin[1] + i * self.spacing[1])[None, :, None]
        x = (self.origin[0] + j * self.spacing[2])[None, None, :]
        return z, y, x

    def index_of(self, xyz: np.ndarray) -> tuple[int, int, int]:
        return (int(round((xyz[2] - self.origin[2]) / self.spacing[0])),
                int(round((xyz[1] - self.origin[1]) / self.spacing[1])),
                int(round((xyz[0] - self.origin[0]) / self.spacing[2])))

    def contains(self, kij: tuple[int, int, int]) -> bool:
        return all(0 <= v < n for v, n in zip(kij, self.shape))


# ---------------------------------------------------------------------------------------------
# anatomy


@dataclass
class _Body:
    """Per-patient anatomy parameters (mm, relative to the scan centre)."""

    ax: float
    ay: float
    lung_cx: float
    lung_cy: float
    lung_ax: float
    lung_ay: float
    lung_zc: float
    lung_hz: float
    heart: tuple[float, float, float, float, float, float]  # cx, cy, cz, ax, ay, az
    liver: tuple[float, float, float, float, float, float]
    spine_y: float
    rib_period: float
    rib_phase: float


def _draw_body(rng: np.random.Generator, z_extent: float) -> _Body:
    ax = rng.uniform(148, 162)
    ay = rng.uniform(100, 118)
    return _Body(
        ax=ax, ay=ay,
        lung_cx=rng.uniform(0.43, 0.48) * ax, lung_cy=rng.uniform(-6, 4),
        lung_ax=rng.uniform(0.33, 0.37) * ax, lung_ay=rng.uniform(0.70, 0.78) * ay,
        lung_zc=rng.uniform(10, 30), lung_hz=rng.uniform(145, 165),
        heart=(rng.uniform(12, 28), rng.uniform(-0.30, -0.18) * ay, rng.uniform(-60, -40),
               rng.uniform(50, 62), rng.uniform(40, 50), rng.uniform(50, 60)),
        liver=(rng.uniform(-50, -30), rng.uniform(-5, 10), -z_extent / 2 - rng.uniform(40, 70),
               rng.uniform(100, 120), rng.uniform(80, 95), rng.uniform(75, 90)),
        spine_y=ay - rng.uniform(38, 46),
        rib_period=rng.uniform(24, 30), rib_phase=rng.uniform(0, 1),
    )


def _lung_field(body: _Body, z: float, y: np.ndarray, x: np.ndarray, side: int) -> np.ndarray:
    """Signed distance (mm) to one lung (side -1 = patient right, +1 = left) at height z."""
    f2 = 1.0 - ((z - body.lung_zc) / body.lung_hz) ** 2
    if f2 <= 0:
        return np.full(np.broadcast(x, y).shape, 1e3, dtype=np.float32)
    f = np.sqrt(f2)
    # lungs widen towards the base and are flatter anteriorly: shift the centre posteriorly with height
    return _ellipse_sd(x, y, side * body.lung_cx, body.lung_cy + 0.05 * (z - body.lung_zc),
                       body.lung_ax * f, body.lung_ay * f)


def _ellipsoid_sd(x, y, z, p: tuple[float, float, float, float, float, float]) -> np.ndarray:
    cx, cy, cz, ax, ay, az = p
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
    return ((r - 1.0) * min(ax, ay, az)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Zero-mean unit-variance Gaussian-filtered noise (tissue texture)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px)
    return n / (n.std() + 1e-6)


def _anatomy(body: _Body, grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean HU volume without vessels and nodules, and the soft lung mask [0, 1]."""
    d, h, w = grid.shape
    vol = np.empty(grid.shape, dtype=np.float32)
    lung = np.zeros(grid.shape, dtype=np.float32)
    _, y, x = grid.coords((slice(0, 1), slice(0, h), slice(0, w)))
    y, x = y[0], x[0]
    e = grid.edge
    # tissue texture: four 2D fields mixed by weights that drift smoothly along z (a unit vector per
    # slice), which is a unit-variance 3D field at a fraction of the cost of a 3D filter
    sigma_px = 4.0 / grid.spacing[1]
    fields = np.stack([_smooth_noise(rng, (h, w), sigma_px) for _ in range(4)])
    drift = ndimage.gaussian_filter1d(rng.standard_normal((d, 4)), 10.0 / grid.spacing[0], axis=0)
    drift /= np.linalg.norm(drift, axis=1, keepdims=True) + 1e-9
    drift = drift.astype(np.float32)
    # everything that does not change along z is drawn once
    base = np.full((h, w), -1000.0, dtype=np.float32)
    body_occ = _soft(_ellipse_sd(x, y, 0.0, 0.0, body.ax, body.ay), e)
    base += body_occ * (-100.0 - base)  # subcutaneous fat
    base += _soft(_ellipse_sd(x, y, 0.0, -2.0, body.ax - 14, body.ay - 12), e) * (45.0 - base)  # muscle
    # ribs: a ring inside the muscle layer, present in bands that slope down anteriorly
    cav_ax, cav_ay = body.ax - 26, body.ay - 22
    ring = np.abs(_ellipse_sd(x, y, 0.0, -2.0, cav_ax + 5, cav_ay + 5))
    rib_cortex, rib_marrow = _soft(ring - 3.2, e), _soft(ring - 1.8, e)
    rib_phase = 25 * np.sin(np.arctan2(y, x))
    rib_side = np.abs(x) > 25
    cav_sd = _ellipse_sd(x, y, 0.0, -2.0, cav_ax, cav_ay)
    cav_occ, cav_inner = _soft(cav_sd, e), _soft(cav_sd + 2.0, e)
    vb_sd = _ellipse_sd(x, y, 0.0, body.spine_y, 19.0, 16.0)
    vb_occ, vb_inner = _soft(vb_sd, e), _soft(vb_sd + 1.8, e)
    canal_occ = _soft(_ellipse_sd(x, y, 0.0, body.spine_y + 26.0, 8.0, 7.0), e)
    arch_occ = _soft(_ellipse_sd(x, y, 0.0, body.spine_y + 27.0, 15.0, 12.0), e)
    for k in range(d):
        z = grid.origin[2] + k * grid.spacing[0]
        tex_k = np.tensordot(drift[k], fields, axes=1)
        s = base.copy()
        band = np.sin(2 * np.pi * ((z + rib_phase) / body.rib_period + body.rib_phase))
        rib = np.clip((band - 0.72) / 0.12, 0, 1) * rib_side
        s += rib_cortex * rib * (900.0 - s)  # cortex
        s += rib_marrow * rib * (250.0 - s)  # marrow
        s += cav_occ * (-80.0 - s)  # mediastinal fat fills the cavity
        # lungs, carved by heart and liver
        lmask = np.maximum(_soft(_lung_field(body, z, y, x, -1), e), _soft(_lung_field(body, z, y, x, 1), e))
        lmask *= cav_inner
        heart = _soft(_ellipsoid_sd(x, y, z, body.heart), e)
        liver = _soft(_ellipsoid_sd(x, y, z, body.liver), e)
        lmask *= (1 - heart) * (1 - liver)
        s += lmask * (-860.0 + 18.0 * tex_k - s)
        s += heart * (40.0 + 6.0 * tex_k - s)
        s += liver * (58.0 + 5.0 * tex_k - s)
        # spine: vertebral body (cortex, cancellous), canal, with intervertebral discs every ~28 mm
        disc = np.cos(2 * np.pi * z / 28.0) > 0.82
        s += vb_occ * ((90.0 if disc else 850.0) - s)
        s += vb_inner * ((90.0 if disc else 260.0) - s)
        s += arch_occ * (600.0 - s)
        s += canal_occ * (25.0 - s)
        s += body_occ * 6.0 * tex_k  # soft-tissue mottle
        vol[k] = s
        lung[k] = lmask
    return vol, lung


def _vessel_tree(body: _Body, rng: np.random.Generator, z_lo: float, z_hi: float) -> list[_Tube]:
    """Pulmonary vessels: branching tubes from each hilum that taper towards the pleura. Cut across,
    a vessel is a bright round blob of nodule size: the look-alikes a detector has to reject."""
    tubes: list[_Tube] = []
    zs = body.heart[2] + 0.8 * body.heart[5]
    for side in (-1, 1):
        hilum = np.array([side * 0.5 * body.lung_cx, body.lung_cy + 5.0, zs], dtype=np.float64)
        roots = [[side * 0.4, -0.2, 0.9], [side * 0.6, 0.3, 0.7], [side * 1.0, -0.3, 0.2], [side * 1.0, 0.4, 0.0],
                 [side * 0.7, -0.6, -0.4], [side * 0.6, 0.5, -0.6], [side * 0.4, 0.0, -0.9]]
        for root in roots:
            v = np.array(root) + rng.normal(0, 0.1, 3)
            stack = [(hilum.copy(), v / np.linalg.norm(v), rng.uniform(3.5, 5.5), 0)]
            while stack:
                a, v, r, depth = stack.pop()
                length = rng.uniform(4.0, 6.5) * r ** 0.7 + 3.0
                b = a + v * length
                lung_sd = float(_lung_field(body, float(b[2]), np.array(b[1]), np.array(b[0]), side))
                if lung_sd > -2.0 or b[2] < z_lo - 30 or b[2] > z_hi + 30:
                    tubes.append(_Tube(a, a + v * length * 0.5, r, 45.0))
                    continue
                tubes.append(_Tube(a, b, r, 45.0))
                if r < 0.65 or depth > 14:
                    continue
                # children keep the parent's course (vessels run towards the periphery)
                for _ in range(2):
                    child = v + rng.normal(0, 0.4, 3)
                    child /= np.linalg.norm(child)
                    stack.append((b, child, r * rng.uniform(0.72, 0.88), depth + 1))
    return tubes


def _great_vessels_and_airway(body: _Body, z_lo: float, z_hi: float) -> list[_Tube]:
    """Trachea and main bronchi (air with a soft-tissue wall), aorta (ascending, arch, descending)."""
    carina = body.heart[2] + 0.8 * body.heart[5] + 12.0
    ty = body.spine_y - 42.0
    top = z_hi + 40
    hilum = {side: np.array([side * 0.5 * body.lung_cx, body.lung_cy + 5.0, carina - 18.0]) for side in (-1, 1)}
    walls, lumens = [], []
    walls.append(_Tube(np.array([0.0, ty, carina]), np.array([0.0, ty, top]), 10.5, 30.0))
    lumens.append(_Tube(np.array([0.0, ty, carina]), np.array([0.0, ty, top]), 8.5, -1000.0))
    for side in (-1, 1):
        walls.append(_Tube(np.array([0.0, ty, carina]), hilum[side], 7.5, 30.0))
        lumens.append(_Tube(np.array([0.0, ty, carina]), hilum[side], 5.8, -1000.0))
    arch_z = carina + 22.0
    asc = np.array([6.0, body.heart[1] + 12.0, arch_z])
    desc = np.array([22.0, body.spine_y - 24.0, arch_z])
    aorta = [_Tube(np.array([6.0, body.heart[1] + 12.0, body.heart[2]]), asc, 14.0, 42.0),
             _Tube(asc, desc, 12.0, 42.0),
             _Tube(desc, np.array([18.0, body.spine_y - 22.0, z_lo - 40]), 11.0, 42.0)]
    return aorta + walls + lumens


# ---------------------------------------------------------------------------------------------
# nodules


def draw_nodule_specs(rng: np.random.Generator) -> list[dict]:
    """0-4 nodule specs (the ``nodules`` argument of make_ldct_phantom) across Lung-RADS size bands;
    malignancy decides the odds of margin and composition. Training uses it to enrich phantoms."""
    n = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    specs = []
    for _ in range(n):
        malignant = bool(rng.random() < 0.4)
        if malignant:
            margin = str(rng.choice(MARGINS, p=[0.15, 0.35, 0.50]))
            composition = str(rng.choice(COMPOSITIONS, p=[0.50, 0.35, 0.15, 0.0]))
            diameter = float(rng.choice([rng.uniform(4, 6), rng.uniform(6, 8), rng.uniform(8, 15),
                                         rng.uniform(15, 30)], p=[0.1, 0.2, 0.4, 0.3]))
        else:
            margin = str(rng.choice(MARGINS, p=[0.75, 0.18, 0.07]))
            composition = str(rng.choice(COMPOSITIONS, p=[0.45, 0.05, 0.2, 0.3]))
            diameter = float(rng.choice([rng.uniform(3, 6), rng.uniform(6, 8), rng.uniform(8, 15),
                                         rng.uniform(15, 25)], p=[0.35, 0.3, 0.25, 0.1]))
        if composition == "calcified":
            margin = "smooth"
        specs.append({"diameter_mm": round(diameter, 2), "composition": composition, "margin": margin,
                      "malignant": malignant})
    return specs


def pooled_nodule_specs(rng: np.random.Generator, draws: int, cap: int) -> list[dict]:
    """``draws`` independent draws of draw_nodule_specs, at most ``cap`` nodules: more nodules from
    the same distribution per phantom (a phantom's cost is its anatomy and projections)."""
    return [spec for _ in range(draws) for spec in draw_nodule_specs(rng)][:cap]


@dataclass
class _NoduleShape:
    center: np.ndarray  # (x, y, z) mm
    radius: float
    axes: np.ndarray  # 3x3 rotation, rows = principal directions
    scales: np.ndarray  # relative semi-axes, geometric mean 1
    lobes: list[tuple[np.ndarray, float]]
    spicules: list[tuple[np.ndarray, np.ndarray, float, float]]  # anchor (unit), direction, length mm, radius mm

    def signed_distance(self, x, y, z) -> np.ndarray:
        px, py, pz = x - self.center[0], y - self.center[1], z - self.center[2]
        q = [(self.axes[i, 0] * px + self.axes[i, 1] * py + self.axes[i, 2] * pz) / self.scales[i]
             for i in range(3)]
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        rad = np.full(np.shape(rho), self.radius, dtype=np.float32)
        for direction, amp in self.lobes:
            cos = (q[0] * direction[0] + q[1] * direction[1] + q[2] * direction[2]) / rho
            rad = rad + self.radius * amp * np.exp((cos - 1.0) / 0.15)
        return (rho - rad).astype(np.float32)

    def volume_mm3(self) -> float:
        """Volume of the nodule body (spicules excluded, as in clinical volumetry) on a fine grid."""
        reach = self.radius * float(self.scales.max()) * 1.6 + 0.5
        n = 48
        step = 2 * reach / n
        ax = (np.arange(n) + 0.5) * step - reach
        inside = self.signed_distance(self.center[0] + ax[None, None, :], self.center[1] + ax[None, :, None],
                                      self.center[2] + ax[:, None, None]) < 0
        return float(inside.sum() * step ** 3)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _place_nodules(specs: list[dict], grid: _Grid, lung: np.ndarray,
                   rng: np.random.Generator, avoid: list[_NoduleShape] = ()) -> list[_NoduleShape]:
    """Centres drawn inside the lungs (away from the scan ends) with the body mostly in lung, clear of
    each other and of the ``avoid`` shapes (nodules a later round keeps)."""
    shapes = []
    avoid = list(avoid)
    d, h, w = grid.shape
    candidates = np.argwhere(lung[:: 2, :: 2, :: 2] > 0.99) * 2
    for spec in specs:
        r = spec["diameter_mm"] / 2
        for _ in range(200):
            k, i, j = candidates[rng.integers(len(candidates))]
            margin_k = int(np.ceil((r + 2) / grid.spacing[0]))
            if not margin_k <= k < d - margin_k:
                continue
            # require lung around the centre at 0.7 r in the six axis directions
            ok = True
            for dk, di, dj in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                kk = int(k + dk * 0.7 * r / grid.spacing[0])
                ii = int(i + di * 0.7 * r / grid.spacing[1])
                jj = int(j + dj * 0.7 * r / grid.spacing[2])
                if not grid.contains((kk, ii, jj)) or lung[kk, ii, jj] < 0.5:
                    ok = False
                    break
            if ok and all(np.linalg.norm(s.center - _center_of(grid, k, i, j)) > s.radius + r + 4
                          for s in shapes + avoid):
                break
        center = _center_of(grid, k, i, j) + rng.uniform(-0.5, 0.5, 3) * np.array(grid.spacing[::-1])
        scales = rng.uniform(0.85, 1.18, 3)
        scales /= np.prod(scales) ** (1 / 3)
        lobes = []
        if spec["margin"] == "lobulated":
            lobes = [(_unit(rng), float(rng.uniform(0.22, 0.4))) for _ in range(int(rng.integers(4, 8)))]
        elif spec["margin"] == "spiculated":
            lobes = [(_unit(rng), float(rng.uniform(0.1, 0.25))) for _ in range(int(rng.integers(3, 6)))]
        spicules = []
        if spec["margin"] == "spiculated":
            # strands leave the surface at every height and run outwards close to the axial plane,
            # so each slice through the nodule shows some radiating from its edge
            for _ in range(int(rng.integers(10, 20))):
                azimuth = rng.uniform(0, 2 * np.pi)
                height = rng.uniform(-0.8, 0.8)
                anchor = np.array([np.cos(azimuth) * np.sqrt(1 - height ** 2),
                                   np.sin(azimuth) * np.sqrt(1 - height ** 2), height])
                tilt = rng.uniform(-0.25, 0.25)
                direction = np.array([np.cos(azimuth), np.sin(azimuth), tilt]) / np.sqrt(1 + tilt ** 2)
                spicules.append((anchor, direction, float(r * rng.uniform(0.8, 1.8) + 2.0),
                                 float(rng.uniform(0.35, 0.7))))
        shape = _NoduleShape(center, r, _rotation(rng), scales, lobes, spicules)
        # scale so the volume-equivalent diameter is the requested one: lobes and elongation
        # change the shape, not the size reported in the truth (diameter and volume agree)
        equivalent = (6 * shape.volume_mm3() / np.pi) ** (1 / 3)
        shape.radius *= spec["diameter_mm"] / equivalent
        shapes.append(shape)
    return shapes


def _center_of(grid: _Grid, k: int, i: int, j: int) -> np.ndarray:
    return np.array([grid.origin[0] + j * grid.spacing[2], grid.origin[1] + i * grid.spacing[1],
                     grid.origin[2] + k * grid.spacing[0]], dtype=np.float64)


def _render_nodule(vol: np.ndarray, labels: np.ndarray, label: int, shape: _NoduleShape, spec: dict,
                   grid: _Grid, rng: np.random.Generator) -> None:
    reach = shape.radius * float(shape.scales.max()) * 1.6 + 2 * grid.edge
    sl = grid.index_box(shape.center - reach, shape.center + reach)
    z, y, x = grid.coords(sl)
    sd = shape.signed_distance(x, y, z)
    occ = _soft(sd, grid.edge)
    comp = spec["composition"]
    solid_hu = float(rng.uniform(20, 60))
    if comp == "ground_glass":
        target = np.float32(rng.uniform(-680, -480))
    elif comp == "part_solid":
        core = _soft(sd + shape.radius * (1 - rng.uniform(0.35, 0.6)), grid.edge)
        target = rng.uniform(-650, -480) + core * (solid_hu - (-560.0))
    elif comp == "calcified":
        # benign pattern: diffuse calcification with a denser (central or laminated) core
        core = _soft(sd + shape.radius * rng.uniform(0.3, 0.6), grid.edge)
        target = rng.uniform(250, 450) + core * rng.uniform(400, 900)
    else:
        target = np.float32(solid_hu)
    sub = vol[sl]
    sub += occ * (target - sub)
    # spicules: thin strands of solid tissue radiating into the lung
    for anchor, direction, length, radius in shape.spicules:
        start = shape.center + anchor * shape.radius * 0.8
        _render_tube(vol, _Tube(start, start + direction * length, radius,
                                solid_hu if comp != "ground_glass" else -450.0), grid)
    lab = labels[sl]
    lab[occ >= 0.5] = label
    kij = grid.index_of(shape.center)
    labels[kij] = label


# ---------------------------------------------------------------------------------------------
# low-dose simulation in the projection domain


@lru_cache(maxsize=4)
def _projector(m: int, n_angles: int) -> tuple[sparse.csr_matrix, int]:
    """Backprojector A^T of a pixel-driven parallel-beam projector (linear interpolation onto unit
    detector bins), as CSR with one row per pixel; its transpose projects."""
    n_det = int(np.ceil(m * np.sqrt(2))) + 3
    c = (m - 1) / 2
    y, x = np.mgrid[0:m, 0:m].astype(np.float32) - c
    inside = ((x ** 2 + y ** 2) <= (m / 2 + 1) ** 2).ravel()
    xs, ys = x.ravel()[inside], y.ravel()[inside]
    th = np.arange(n_angles, dtype=np.float32) * np.float32(np.pi / n_angles)
    s = xs[:, None] * np.cos(th)[None] + ys[:, None] * np.sin(th)[None] + np.float32((n_det - 1) / 2)
    i0 = np.floor(s).astype(np.int32)
    wt = s - i0
    bins = np.arange(n_angles, dtype=np.int32)[None] * n_det + i0  # (pixels, angles), increasing per row
    indices = np.stack([bins, bins + 1], axis=2).reshape(-1)
    data = np.stack([1 - wt, wt], axis=2).reshape(-1).astype(np.float32)
    counts = np.where(inside, 2 * n_angles, 0)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    a_t = sparse.csr_matrix((data, indices, indptr), shape=(m * m, n_angles * n_det))
    return a_t, n_det


def _ramp_filter(n_det: int) -> np.ndarray:
    """Frequency response of the Ram-Lak filter (spatial kernel, zero-padded), for unit bin spacing."""
    size = int(2 ** np.ceil(np.log2(2 * n_det)))
    n = np.arange(-(size // 2), size // 2)
    h = np.zeros(size, dtype=np.float64)
    h[size // 2] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return np.real(np.fft.fft(np.fft.ifftshift(h)))


def _upsample2(vol: np.ndarray) -> np.ndarray:
    """In-plane x2 linear interpolation (new pixel centres at 1/4 and 3/4 of each coarse pixel)."""
    out = vol
    for axis in (2, 1):
        def at(index, ndim=out.ndim, axis=axis):
            return tuple(index if a == axis else slice(None) for a in range(ndim))

        shape = list(out.shape)
        shape[axis] *= 2
        up = np.empty(shape, dtype=np.float32)
        even, odd = up[at(slice(0, None, 2))], up[at(slice(1, None, 2))]
        np.multiply(out, np.float32(0.75), out=even)
        even[at(slice(1, None))] += np.float32(0.25) * out[at(slice(None, -1))]
        even[at(slice(0, 1))] += np.float32(0.25) * out[at(slice(0, 1))]
        np.multiply(out, np.float32(0.75), out=odd)
        odd[at(slice(None, -1))] += np.float32(0.25) * out[at(slice(1, None))]
        odd[at(slice(-1, None))] += np.float32(0.25) * out[at(slice(-1, None))]
        out = up
    return out


def _downsample(vol: np.ndarray, factor: int) -> np.ndarray:
    d, h, w = vol.shape
    return vol.reshape(d, h // factor, factor, w // factor, factor).mean(axis=(2, 4), dtype=np.float32)


def _dose_noise(clean_hu: np.ndarray, pixel_mm: float, slice_mm: float, m: int, n_angles: int,
                dose_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Full-dose and low-dose noise volumes (HU) from Poisson counts on a parallel-beam sinogram.

    Photons per ray scale with the detector bin area (bin width x slice thickness) and are shared
    among the views, so the noise level depends on voxel size and dose, not on the simulated view
    count. The low-dose counts are a Poisson split of the full-dose counts (a dose reduction keeps a
    random subset of the same photons), so the two series carry correlated noise like a real pair.
    """
    d, h, w = clean_hu.shape
    factor = h // m
    mu = np.clip(clean_hu, -1000.0, None) * np.float32(_MU_WATER_PER_MM / 1000.0) + np.float32(_MU_WATER_PER_MM)
    if factor != 1:
        mu = _downsample(mu, factor)
    grid_mm = pixel_mm * factor
    i0_full = _PHOTONS_PER_MM2 * grid_mm * slice_mm / n_angles
    a_t, n_det = _projector(m, n_angles)
    x = np.ascontiguousarray(mu.reshape(d, m * m).T)
    line = (a_t.T @ x) * np.float32(grid_mm)  # (angles * n_det, D), unitless line integrals
    expected = i0_full * np.exp(-line.astype(np.float64))
    counts_low = rng.poisson(expected * dose_fraction)
    counts_full = counts_low + rng.poisson(expected * (1.0 - dose_fraction))
    del expected
    size = int(2 ** np.ceil(np.log2(2 * n_det)))
    resp = _ramp_filter(n_det)[: size // 2 + 1].astype(np.float32)
    deltas = [-np.log(np.maximum(c, 0.5) / i0).astype(np.float32) - line
              for c, i0 in ((counts_full, i0_full), (counts_low, i0_full * dose_fraction))]
    del counts_low, counts_full
    sino = np.stack(deltas).reshape(2, n_angles, n_det, d)
    del deltas
    spec = sp_fft.rfft(sino, n=size, axis=2, workers=2)
    spec *= resp[None, None, :, None]
    filt = sp_fft.irfft(spec, n=size, axis=2, workers=2)[:, :, :n_det].astype(np.float32)
    del spec, sino
    out = []
    for filtered in filt:
        rec = a_t @ np.ascontiguousarray(filtered.reshape(n_angles * n_det, d))
        noise = rec.T.reshape(d, m, m) * np.float32(np.pi / n_angles / grid_mm * 1000.0 / _MU_WATER_PER_MM)
        out.append(_upsample2(noise) if factor == 2 else noise)
    return out[0], out[1]


_draw_nodule_specs = draw_nodule_specs  # earlier name, used by training/ldct_data.py


# ---------------------------------------------------------------------------------------------
# public API


@dataclass
class LdctFollowUp:
    """A later screening round of the patient of ``seed``: same anatomy, lying elsewhere on the table.

    The body is drawn in its own frame (the first round's patient coordinates); in this round it lies at
    patient coordinates = body frame + ``translation_mm`` (``table_shift_mm`` moves the scan window along
    z with the patient, ``body_shift_mm`` is where the patient lies within that window). The prior
    round's nodules keep their shape and place: ``diameters_mm`` gives each one's diameter now (None:
    resolved, not drawn); ``new_specs`` adds nodules placed clear of them.
    """

    round_index: int
    prior_shapes: list
    prior_specs: list[dict]
    diameters_mm: list[float | None]
    new_specs: list[dict]
    body_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    table_shift_mm: float = 0.0

    @property
    def translation_mm(self) -> tuple[float, float, float]:
        dx, dy, dz = self.body_shift_mm
        return (dx, dy, dz + self.table_shift_mm)


def _scaled(shape: _NoduleShape, diameter_mm: float, prior_diameter_mm: float) -> _NoduleShape:
    """The same nodule at another size (lobes scale with it; spicules keep their length)."""
    factor = diameter_mm / prior_diameter_mm
    return _NoduleShape(shape.center.copy(), shape.radius * factor, shape.axes, shape.scales, shape.lobes,
                        shape.spicules)


def make_ldct_phantom(seed: int, size: str = "full", dose_fraction: float = 0.25,
                      nodules: list[dict] | None = None, follow_up: LdctFollowUp | None = None) -> LdctPhantom:
    """One chest LDCT series, deterministic for ``seed``.

    ``nodules`` overrides the random nodules: dicts with ``diameter_mm``, ``composition``
    (solid | part_solid | ground_glass | calcified), ``margin`` (smooth | lobulated | spiculated) and
    optionally ``malignant`` (default: spiculated/lobulated or part-solid). ``follow_up`` makes a later
    screening round of the same patient instead (LdctFollowUp; ``nodules`` is then ignored): new UIDs,
    new noise, the scan elsewhere in patient coordinates.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 < dose_fraction <= 1:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction!r}")
    matrix, pix, dz, n_slices, noise_m, n_angles = _SIZES[size]
    rng = np.random.default_rng([seed, 0x1DC7])
    z_extent = (n_slices - 1) * dz
    table_z = -float(rng.integers(120, 200))
    origin = (-(matrix - 1) / 2 * pix, -(matrix - 1) / 2 * pix, round(table_z - z_extent / 2, 3))
    grid = _Grid((n_slices, matrix, matrix), (dz, pix, pix), origin)
    translation = np.zeros(3)
    if follow_up is not None:
        # everything is drawn in the body frame on a grid whose voxels sit where this round's scan puts
        # them; only the written geometry (and the truth) is in this round's patient coordinates
        translation = np.array(follow_up.translation_mm, dtype=np.float64)
        origin = (origin[0], origin[1], round(origin[2] + follow_up.table_shift_mm, 3))
        grid = _Grid(grid.shape, grid.spacing, tuple(float(o - t) for o, t in zip(origin, translation)))
    body = _draw_body(rng, z_extent)
    # anatomy is drawn relative to the scan centre; shift the body frame to table coordinates
    shift = table_z
    body.lung_zc += shift
    body.heart = body.heart[:2] + (body.heart[2] + shift,) + body.heart[3:]
    body.liver = body.liver[:2] + (body.liver[2] + shift,) + body.liver[3:]
    clean, lung = _anatomy(body, grid, rng)
    for tube in _great_vessels_and_airway(body, grid.origin[2], grid.origin[2] + z_extent):
        _render_tube(clean, tube, grid)
    for tube in _vessel_tree(body, rng, grid.origin[2], grid.origin[2] + z_extent):
        _render_tube(clean, tube, grid, blend_mask=lung)

    if follow_up is not None:
        rng = np.random.default_rng([seed, 0x1DC7, follow_up.round_index])
        kept = [(_scaled(shape, d, spec["diameter_mm"]), {**spec, "diameter_mm": round(float(d), 2)})
                for shape, spec, d in zip(follow_up.prior_shapes, follow_up.prior_specs, follow_up.diameters_mm)
                if d is not None]
        new_specs = [dict(spec) for spec in follow_up.new_specs]
        new_shapes = _place_nodules(new_specs, grid, lung, rng, avoid=[shape for shape, _ in kept])
        shapes = [shape for shape, _ in kept] + new_shapes
        specs = [spec for _, spec in kept] + new_specs
    elif nodules is None:
        specs = draw_nodule_specs(rng)
    else:
        specs = []
        for spec in nodules:
            full = dict(spec)
            full.setdefault("margin", "smooth")
            full.setdefault("composition", "solid")
            full.setdefault("malignant", full["margin"] in ("spiculated", "lobulated")
                            or full["composition"] == "part_solid")
            specs.append(full)
    labels = np.zeros(grid.shape, dtype=np.int16)
    if follow_up is None:
        shapes = _place_nodules(specs, grid, lung, rng)
    for label, (shape, spec) in enumerate(zip(shapes, specs), start=1):
        _render_nodule(clean, labels, label, shape, spec, grid, rng)

    noise_full, noise_low = _dose_noise(clean, pix, dz, noise_m, n_angles, dose_fraction, rng)
    hu_full = np.clip(clean + noise_full, -1024, 3071).astype(np.float32)
    hu_low = np.clip(clean + noise_low, -1024, 3071).astype(np.float32)

    rounds = () if follow_up is None or follow_up.round_index == 1 else (f"round-{follow_up.round_index}",)
    study = synth_uid(_KIND, seed, "study", size, *rounds)
    series = synth_uid(_KIND, seed, "series", size, f"{dose_fraction:.4f}", *rounds)
    sops = [str(synth_uid(_KIND, seed, "sop", size, f"{dose_fraction:.4f}", str(k), *rounds))
            for k in range(n_slices)]
    truth = LdctTruth(
        seed=seed, study_instance_uid=str(study), series_instance_uid=str(series), sop_instance_uids=sops,
        dose_fraction=dose_fraction, round=1 if follow_up is None else follow_up.round_index,
        translation_mm=None if follow_up is None else tuple(round(float(v), 3) for v in translation),
        nodules=[NoduleTruth(center_mm=tuple(round(float(v), 3) for v in s.center + translation),
                             diameter_mm=round(float(spec["diameter_mm"]), 2),
                             volume_mm3=round(s.volume_mm3(), 1),
                             composition=spec["composition"], margin=spec["margin"],
                             malignant=bool(spec["malignant"]))
                 for s, spec in zip(shapes, specs)],
    )
    return LdctPhantom(hu_full=hu_full, hu_low=hu_low, spacing_mm=(dz, pix, pix),
                       origin_mm=tuple(float(v) for v in origin), labels=labels, truth=truth,
                       hu_clean=clean, size=size, nodule_shapes=list(shapes), nodule_specs=[dict(s) for s in specs])


def ldct_datasets(phantom: LdctPhantom) -> list[Dataset]:
    """CT Image Storage instances, one per axial slice of ``hu_low`` (PS3.3 A.3, CT Image IOD)."""
    truth = phantom.truth
    d, h, w = phantom.hu_low.shape
    dz, rs, cs = phantom.spacing_mm
    stored = np.clip(np.rint(phantom.hu_low) + _STORED_OFFSET, 0, 4095).astype(np.uint16)
    rounds = () if truth.round == 1 else (f"round-{truth.round}",)
    frame_uid = synth_uid(_KIND, truth.seed, "frame-of-reference", phantom.size, *rounds)
    ma = round(200.0 * truth.dose_fraction, 1)
    out = []
    for k in range(d):
        ds = base_dataset(_KIND, truth.seed, "CT", CTImageStorage, truth.sop_instance_uids[k],
                          truth.study_instance_uid, truth.series_instance_uid, 2, k + 1,
                          "LDCT lung screening (synthetic)")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "CHEST"
        ds.ProtocolName = "LDCT lung screening"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.ImagesInAcquisition = d
        z = phantom.origin_mm[2] + k * dz
        ds.ImagePositionPatient = [_ds(phantom.origin_mm[0]), _ds(phantom.origin_mm[1]), _ds(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = _ds(z)
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.PixelSpacing = [_ds(rs), _ds(cs)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = h, w
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -_STORED_OFFSET
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        ds.KVP = 120
        ds.XRayTubeCurrent = int(round(ma))
        ds.ExposureTime = 500
        ds.Exposure = int(round(ma * 0.5))
        ds.CTDIvol = round(8.0 * truth.dose_fraction, 3)
        ds.CTDIPhantomTypeCodeSequence = Sequence([_body_phantom_code()])
        ds.ConvolutionKernel = "FBP-RAMLAK"
        ds.ReconstructionDiameter = _ds(w * cs)
        ds.DataCollectionDiameter = _ds(500.0)
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 150
        ds.RotationDirection = "CW"
        ds.ScanOptions = "HELICAL"
        ds.FilterType = "BODY"
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out


def _body_phantom_code() -> Dataset:
    item = Dataset()
    item.CodeValue = "113691"
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "IEC Body Dosimetry Phantom"
    return item


def _ds(v: float) -> str:
    """A decimal string that fits DS (16 characters)."""
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


__all__ = ["LdctFollowUp", "LdctPhantom", "make_ldct_phantom", "ldct_datasets", "draw_nodule_specs", "COMPOSITIONS", "MARGINS"]
