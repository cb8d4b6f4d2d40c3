"""Screening mammography phantoms: four For-Presentation views with breast outline, parenchyma by
BI-RADS density, and masses / calcification clusters with known truth.

Orientation (the conventional display, PS3.3 C.8.11.7 PatientOrientation examples): every view is
stored so that the nipple points away from the chest wall, with the chest wall on the LEFT image edge
(column 0) for left-breast views (LCC ``A\\R``, LMLO ``A\\FR``) and on the RIGHT image edge (last column)
for right-breast views (RCC ``P\\L``, RMLO ``P\\FL``): right views are the mirror image of the left ones.
Rows run lateral -> medial on CC views and superior (axilla) -> inferior on MLO views, where the
pectoral muscle is the bright wedge in the upper chest-wall corner.

A lesion is placed once in breast coordinates (distance from the chest wall, medio-lateral and
supero-inferior offsets) and projected into the CC and the MLO of its side, so it sits at the same
depth from the chest wall on both views, as a reader would expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation
from scipy import fft as sp_fft
from scipy import ndimage

from oncostream.synth.dicom import base_dataset, synth_uid
from oncostream.synth.ground_truth import MammoLesionTruth, MammoLesionView, MammoTruth

_KIND = "mammo"
VIEWS = ("LCC", "LMLO", "RCC", "RMLO")
DENSITIES = ("a", "b", "c", "d")
# size -> (rows, columns, pixel spacing mm)
_SIZES = {"full": (2048, 1664, 0.1), "small": (512, 416, 0.4)}
# fibroglandular fraction range of the breast per BI-RADS density category (5th edition wording);
# neighbouring ranges overlap a little, as readers' calls do at the category edges
_GLANDULAR = {"a": (0.02, 0.12), "b": (0.10, 0.30), "c": (0.27, 0.55), "d": (0.52, 0.85)}
_ORIENTATION = {"LCC": ["A", "R"], "LMLO": ["A", "FR"], "RCC": ["P", "L"], "RMLO": ["P", "FL"]}
# SNOMED CT view codes (CID 4014) and laterality
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


@dataclass
class MammoPhantom:
    """One synthetic screening exam: stored pixel values per view, lesion masks and truth."""

    views: dict[str, np.ndarray]  # "LCC" | "LMLO" | "RCC" | "RMLO" -> uint16 [H, W], MONOCHROME2
    lesion_masks: dict[str, np.ndarray]  # same keys -> bool [H, W], union of lesions on that view
    pixel_spacing_mm: float
    bits_stored: int  # 12..14
    truth: MammoTruth
    breast_masks: dict[str, np.ndarray] | None = None  # same keys -> bool [H, W], breast incl. skin
    size: str = "full"


@dataclass
class _Breast:
    depth_mm: float  # chest wall to nipple on the CC view
    half_width_mm: float  # half the breast extent along rows on the CC view
    mlo_depth_mm: float
    mlo_half_height_mm: float
    mlo_center_frac: float  # row of the MLO nipple line as a fraction of the image height
    pectoral_top_frac: float  # width of the pectoral wedge at the top row (fraction of image width)
    pectoral_len_frac: float  # how far down the chest-wall edge it reaches (fraction of height)
    glandular_fraction: float


@dataclass
class _Lesion:
    type: str  # mass | calcification
    shape: str  # round | oval (circumscribed) | irregular | spiculated | cluster
    laterality: str
    malignant: bool
    size_mm: float
    depth: float  # fraction of the breast depth from the chest wall, 0..1
    ml: float  # medio-lateral offset, -1..1 (CC rows)
    si: float  # supero-inferior offset, -1..1 (MLO rows)
    contrast: float  # relative to the glandular contrast
    aspect: float
    angle: float
    seed: int


def _power_law_texture(rng: np.random.Generator, shape: tuple[int, int], beta: float, scale_px: float) -> np.ndarray:
    """Gaussian field with a 1/f^beta power spectrum (mammographic parenchyma has beta near 3)."""
    h, w = shape
    fy = sp_fft.fftfreq(h)[:, None]
    fx = sp_fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2) + 1.0 / (scale_px * 40)
    amp = (f ** (-beta / 2)).astype(np.float32)
    noise = rng.standard_normal((h, w), dtype=np.float32)
    field = sp_fft.irfft2(sp_fft.rfft2(noise, workers=2) * amp, s=(h, w), workers=2).astype(np.float32)
    field -= field.mean()
    return field / (field.std() + 1e-6)


def _radial_texture(rng: np.random.Generator, h: int, w: int, nipple_row: float, nipple_col: float,
                    spacing: float) -> np.ndarray:
    """Texture stretched along lines that converge on the nipple (ducts and fibrous strands)."""
    n_theta, n_r = 256, 256
    polar = _power_law_texture(rng, (n_theta, n_r), 2.6, 1.0)
    rows = np.arange(h, dtype=np.float32)[:, None] - nipple_row
    cols = nipple_col - np.arange(w, dtype=np.float32)[None, :]
    theta = np.arctan2(rows, cols + 1e-3)  # -pi..pi, 0 towards the chest wall
    r = np.sqrt(rows ** 2 + cols ** 2) * spacing  # mm
    coords = np.stack(np.broadcast_arrays((theta / np.pi + 1) * (n_theta - 1) / 2, r / 12.0))
    return ndimage.map_coordinates(polar, coords, order=1, mode="mirror").astype(np.float32)


def _draw_breast(rng: np.random.Generator, density: str, image_height_mm: float) -> _Breast:
    lo, hi = _GLANDULAR[density]
    breast = _Breast(
        depth_mm=rng.uniform(95, 135), half_width_mm=rng.uniform(72, 92),
        mlo_depth_mm=0.0, mlo_half_height_mm=0.0,
        mlo_center_frac=rng.uniform(0.42, 0.5), pectoral_top_frac=rng.uniform(0.25, 0.4),
        pectoral_len_frac=rng.uniform(0.35, 0.55), glandular_fraction=rng.uniform(lo, hi),
    )
    breast.mlo_depth_mm = breast.depth_mm * rng.uniform(1.12, 1.25)
    # the MLO includes the axillary tail: the outline reaches the top edge along the chest wall
    breast.mlo_half_height_mm = rng.uniform(0.58, 0.64) * image_height_mm
    return breast


def _view_geometry(breast: _Breast, view: str, h: int, w: int, spacing: float):
    """Normalised breast coordinates for one view in the L orientation (chest wall at column 0).

    Returns (u, v, rho, depth, half, center): u = distance from the chest wall as a fraction of the breast depth,
    v = signed row offset as a fraction of the half extent, rho = normalised elliptical radius.
    """
    rows = (np.arange(h, dtype=np.float32) + 0.5) * spacing
    cols = (np.arange(w, dtype=np.float32) + 0.5) * spacing
    if view == "CC":
        depth, half, center = breast.depth_mm, breast.half_width_mm, h * spacing / 2
    else:
        depth, half, center = breast.mlo_depth_mm, breast.mlo_half_height_mm, h * spacing * breast.mlo_center_frac
    u = (cols / depth)[None, :]
    v = ((rows - center) / half)[:, None]
    if view == "MLO":
        # the MLO outline sags: the inferior part reaches further from the chest wall than the axilla
        v = v - 0.25 * u * u
    rho = np.sqrt(u ** 2 + v ** 2)
    return u, v, rho, depth, half, center


def _lesion_position(lesion: _Lesion, breast: _Breast, view: str, h: int, spacing: float) -> tuple[float, float]:
    """(row, col) in pixels of the lesion centre on one view, L orientation (chest wall at column 0).

    The distance from the chest wall is the same physical distance on CC and MLO; the row mixes the
    medio-lateral and supero-inferior offsets on the oblique view.
    """
    col_mm = lesion.depth * breast.depth_mm
    if view == "CC":
        depth, half, center = breast.depth_mm, breast.half_width_mm, h * spacing / 2
        v = lesion.ml
    else:
        depth, half, center = breast.mlo_depth_mm, breast.mlo_half_height_mm, h * spacing * breast.mlo_center_frac
        v = 0.7 * lesion.si + 0.45 * lesion.ml
    u = col_mm / depth
    limit = float(np.sqrt(max(0.8 ** 2 - u ** 2, 0.0)))  # stay well inside the outline
    v = float(np.clip(v, -limit, limit))
    if view == "MLO":
        v += 0.25 * u * u
    return center / spacing + v * half / spacing, col_mm / spacing


def _draw_lesions(rng: np.random.Generator, malignant_exam: bool) -> list[_Lesion]:
    lesions = []

    if malignant_exam:
        lesions.append(_draw_lesion(rng, True))
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        lesions.append(_draw_lesion(rng, False))
    return lesions


def _draw_lesion(rng: np.random.Generator, malignant: bool) -> _Lesion:
    """One lesion: BI-RADS lexicon shapes by malignancy, size, side and position in the breast."""
    kind = "mass" if rng.random() < 0.65 else "calcification"
    if kind == "mass":
        # BI-RADS lexicon: cancers show spiculated or irregular, indistinct masses; benign masses
        # are round or oval and circumscribed
        shape = str(rng.choice(["spiculated", "spiculated", "irregular"])) if malignant else str(
            rng.choice(["round", "oval"]))
        size = float(rng.uniform(8, 22))
    else:
        shape, size = "cluster", float(rng.uniform(5, 14) if malignant else rng.uniform(8, 20))
    return _Lesion(type=kind, shape=shape, laterality=str(rng.choice(["L", "R"])), malignant=malignant,
                   size_mm=round(size, 2), depth=float(rng.uniform(0.2, 0.75)), ml=float(rng.uniform(-0.55, 0.55)),
                   si=float(rng.uniform(-0.55, 0.55)), contrast=float(rng.uniform(0.4, 1.2)),
                   aspect=float(rng.uniform(0.6, 0.95) if shape == "oval" else rng.uniform(0.85, 1.0)),
                   angle=float(rng.uniform(0, np.pi)), seed=int(rng.integers(2 ** 31)))


def _mass_field(lesion: _Lesion, rr: np.ndarray, cc: np.ndarray, r0: float, c0: float, spacing: float,
                rng: np.random.Generator) -> np.ndarray:
    """Projected mass density [0, 1]: a blurred ellipse with a sharp (circumscribed) edge; irregular
    masses get an angular, microlobulated outline and an indistinct edge; spiculated ones a wobbly
    outline with radiating strands."""
    radius_px = lesion.size_mm / 2 / spacing
    ca, sa = np.cos(lesion.angle), np.sin(lesion.angle)
    dr, dc = rr - r0, cc - c0
    a = (dr * ca + dc * sa) / radius_px
    b = (-dr * sa + dc * ca) / (radius_px * lesion.aspect)
    rho = np.sqrt(a ** 2 + b ** 2)
    if lesion.shape == "spiculated":
        theta = np.arctan2(b, a)
        wobble = sum(rng.uniform(0.05, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (3, 5, 7))
        rho = rho / (1 + wobble)
    elif lesion.shape == "irregular":
        theta = np.arctan2(b, a)
        angular = sum(rng.uniform(0.08, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
        lobules = sum(rng.uniform(0.04, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                      for k in rng.choice(np.arange(6, 13), 3, replace=False))
        rho = rho / (1 + angular + lobules)
    # a compressed sphere projects to a thickness profile sqrt(1 - rho^2), softened at the edge
    body = np.sqrt(np.clip(1 - rho ** 2, 0, 1))
    edge_px = max(0.6, (1.5 if lesion.shape == "irregular" else 0.4) / spacing)
    halo = 0.35 if lesion.shape == "irregular" else 0.15
    body = np.maximum(body, np.clip(1 - (rho - 1) * radius_px / edge_px, 0, 1) * halo * (rho > 1))
    if lesion.shape == "spiculated":
        n = int(rng.integers(10, 20))
        for _ in range(n):
            th = rng.uniform(0, 2 * np.pi)
            length = radius_px * rng.uniform(1.6, 2.8)
            width = max(0.5, rng.uniform(0.15, 0.35) / spacing)
            ux, uy = np.cos(th), np.sin(th)
            t = dr * uy + dc * ux
            perp = np.abs(-dr * ux + dc * uy)
            along = np.clip(t / length, 0, 1)
            strand = np.exp(-(perp / width) ** 2) * (t > 0) * (t < length) * (1 - along) * 0.6
            body = np.maximum(body, strand)
    return body.astype(np.float32)


def _calc_field(lesion: _Lesion, rr: np.ndarray, cc: np.ndarray, r0: float, c0: float, spacing: float,
                rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Calcification specks: fine, many and tight when malignant; fewer, coarser and looser when benign."""
    if lesion.malignant:
        n, spread, sizes = int(rng.integers(8, 20)), lesion.size_mm / 4, (0.15, 0.4)
    else:
        n, spread, sizes = int(rng.integers(4, 8)), lesion.size_mm / 3, (0.4, 0.9)
    field = np.zeros(np.broadcast(rr, cc).shape, dtype=np.float32)
    points = []
    for _ in range(n):
        pr = r0 + rng.normal(0, spread / spacing)
        pc = c0 + rng.normal(0, spread / spacing)
        radius_mm = rng.uniform(*sizes)
        sigma_px = max(radius_mm / spacing / 1.5, 0.5)
        # sub-pixel specks lose peak contrast (partial volume) but keep their integrated signal
        peak = min(1.0, (radius_mm / spacing / 1.5 / sigma_px) ** 2)
        field = np.maximum(field, peak * np.exp(-((rr - pr) ** 2 + (cc - pc) ** 2) / (2 * sigma_px ** 2)))
        points.append((pr, pc))
    return field, points


def _render_view(name: str, breast: _Breast, lesions: list[_Lesion], h: int, w: int, spacing: float,
                 rng: np.random.Generator, max_value: int):
    """Stored pixels, lesion mask, breast mask and lesion placements of one view."""
    view = name[1:]
    side = name[0]
    u, v, rho, depth, half, center = _view_geometry(breast, view, h, w, spacing)
    breast_mask = rho < 1
    # compressed thickness: flat in the middle, falling off over the outer rim (the skin fold)
    rim = np.clip((rho - 0.82) / 0.18, 0, 1)
    thickness = np.sqrt(np.clip(1 - rim ** 2, 0, 1)) * breast_mask
    skin = np.exp(-(((1 - rho) * depth / spacing) / max(1.2 / spacing, 1.0)) ** 2) * breast_mask
    cloud = _power_law_texture(rng, (h, w), 3.0, 2.0 / spacing)
    ducts = _radial_texture(rng, h, w, center / spacing, depth / spacing, spacing)
    fine = _power_law_texture(rng, (h, w), 2.0, 0.5 / spacing)
    # glandular tissue concentrates behind the nipple (upper-outer on MLO) and fades towards the skin
    prior = np.exp(-((u - 0.42) / 0.4) ** 2 - ((v + (0.15 if view == "MLO" else 0.0)) / 0.65) ** 2)
    field = 0.8 * cloud + 0.4 * ducts * np.clip(u / 0.3, 0, 1) + 1.6 * prior - 2.5 * rim
    inside = field[breast_mask] if breast_mask.any() else field.ravel()
    thresh = np.quantile(inside, 1 - breast.glandular_fraction)
    spread = 0.45 * float(inside.std())
    gland = 1.0 / (1.0 + np.exp(-(field - thresh) / spread))
    gland = (gland * thickness).astype(np.float32)
    # Cooper's ligaments: thin curvilinear ridges of the fine texture, seen in the fat
    ligaments = np.clip(1 - np.abs(fine) / 0.06, 0, 1) * (1 - gland) * thickness * (rho > 0.25)
    attenuation = (0.25 * thickness + 0.6 * gland * (1 + 0.12 * fine) + 0.06 * ligaments + 0.12 * skin)
    if view == "MLO":
        # pectoral muscle: a wedge with a slightly convex edge in the upper chest-wall corner
        rows = (np.arange(h, dtype=np.float32) / h)[:, None]
        cols = (np.arange(w, dtype=np.float32) / w)[None, :]
        frac = np.clip(rows / breast.pectoral_len_frac, 0, 1)
        edge = breast.pectoral_top_frac * (1 - frac) * (1 + 0.25 * np.sin(np.pi * frac))
        pect_sd = (cols - edge) * w  # pixels, negative inside
        pect = np.clip(0.5 - pect_sd * spacing, 0, 1) * (rows < breast.pectoral_len_frac)
        # muscle is densest at the chest wall and thins towards its free edge
        muscle = 0.75 + 0.04 * cloud - 0.25 * cols / max(breast.pectoral_top_frac, 1e-3)
        attenuation = np.maximum(attenuation, pect * muscle)
        breast_mask = breast_mask | (pect > 0.5)
    rr = np.arange(h, dtype=np.float32)[:, None]
    cc = np.arange(w, dtype=np.float32)[None, :]
    mask = np.zeros((h, w), dtype=bool)
    placements = []
    for lesion in lesions:
        if lesion.laterality != side:
            continue
        r0, c0 = _lesion_position(lesion, breast, view, h, spacing)
        lrng = np.random.default_rng([lesion.seed, 0 if view == "CC" else 1])
        reach = int(lesion.size_mm * (2.0 if lesion.shape == "spiculated" else 1.2) / spacing) + 4
        r_lo, r_hi = max(int(r0) - reach, 0), min(int(r0) + reach + 1, h)
        c_lo, c_hi = max(int(c0) - reach, 0), min(int(c0) + reach + 1, w)
        sub_r, sub_c = rr[r_lo:r_hi], cc[:, c_lo:c_hi]
        if lesion.type == "mass":
            density_map = _mass_field(lesion, sub_r, sub_c, r0, c0, spacing, lrng)
            attenuation[r_lo:r_hi, c_lo:c_hi] += density_map * 0.45 * lesion.contrast
            lmask = density_map > 0.5
        else:
            density_map, points = _calc_field(lesion, sub_r, sub_c, r0, c0, spacing, lrng)
            attenuation[r_lo:r_hi, c_lo:c_hi] += density_map * (1.0 + 1.5 * lesion.contrast)
            # a disc around every speck, so even sub-pixel specks are inside the mask
            radius_px = max(1.5, 0.6 / spacing)
            lmask = np.zeros(density_map.shape, dtype=bool)
            for pr, pc in points:
                lmask |= (sub_r - pr) ** 2 + (sub_c - pc) ** 2 <= radius_px ** 2
        mask[r_lo:r_hi, c_lo:c_hi] |= lmask
        placements.append((lesion, (r0, c0), lmask, (r_lo, c_lo)))
    # For-Presentation processing: a saturating tone curve (dense regions compress, which is what
    # lets dense tissue hide a mass), then quantum noise, relatively stronger in dense regions
    signal = 1.0 - np.exp(-1.6 * attenuation)
    noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.012 if spacing < 0.3 else 0.008)
    if spacing < 0.3:
        noise = ndimage.gaussian_filter(noise, 0.8) * 2.0
    image = np.clip(signal + noise * (0.5 + signal) * breast_mask + 0.03, 0, 1)
    stored = np.rint(image * max_value).astype(np.uint16)
    if side == "R":
        stored, mask, breast_mask = stored[:, ::-1], mask[:, ::-1], breast_mask[:, ::-1]
        placements = [(les, (r0, w - 1 - c0), lm[:, ::-1], (r_lo, w - (c_lo + lm.shape[1])))
                      for les, (r0, c0), lm, (r_lo, c_lo) in placements]
    return np.ascontiguousarray(stored), np.ascontiguousarray(mask), np.ascontiguousarray(breast_mask), placements


def make_mammo_phantom(seed: int, size: str = "full", malignant: bool | None = None,
                       density: str | None = None, *, round_index: int = 1,
                       interval_cancer_round: int | None = None) -> MammoPhantom:
    """One 4-view screening exam, deterministic for ``seed``.

    ``malignant=None`` lets the seed decide (about 40 % of exams carry a malignant lesion);
    ``density=None`` draws a BI-RADS category with screening prevalence (a 10 %, b 40 %, c 40 %, d 10 %).
    ``round_index`` > 1 is a later screening round of the same woman (same breasts and lesions, new
    UIDs and noise); ``interval_cancer_round`` adds, from that round on, a malignant lesion absent from
    the rounds before it (flagged ``new_since_prior`` in that round's truth).
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if density is not None and density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    h, w, spacing = _SIZES[size]
    rng = np.random.default_rng([seed, 0x3A33])
    malignant_exam = bool(rng.random() < 0.4) if malignant is None else bool(malignant)
    drawn_density = str(rng.choice(DENSITIES, p=[0.1, 0.4, 0.4, 0.1]))
    density = density or drawn_density
    bits_stored = int(rng.choice([12, 14]))
    max_value = 2 ** bits_stored - 1
    breast = _draw_breast(rng, density, h * spacing)
    lesions = _draw_lesions(rng, malignant_exam)
    new_lesions: set[int] = set()
    if interval_cancer_round is not None and round_index >= interval_cancer_round:
        cancer = _draw_lesion(np.random.default_rng([seed, 0x3A33, interval_cancer_round, 0x1C]), True)
        if round_index == interval_cancer_round:
            new_lesions.add(id(cancer))
        lesions.append(cancer)
    rounds = () if round_index == 1 else (f"round-{round_index}",)
    sop_uids = {v: str(synth_uid(_KIND, seed, "sop", size, v, *rounds)) for v in VIEWS}
    views, masks, breasts, lesion_views = {}, {}, {}, {id(les): [] for les in lesions}
    for name in VIEWS:
        vrng = np.random.default_rng([seed, VIEWS.index(name), 0x3A33, *([round_index] if rounds else [])])
        stored, mask, bmask, placements = _render_view(name, breast, lesions, h, w, spacing, vrng, max_value)
        views[name], masks[name], breasts[name] = stored, mask, bmask
        for lesion, (r0, c0), lmask, (r_lo, c_lo) in placements:
            rows = np.flatnonzero(lmask.any(axis=1))
            cols = np.flatnonzero(lmask.any(axis=0))
            if rows.size == 0:
                rows = cols = np.array([0])
                r_lo, c_lo = int(round(r0)), int(round(c0))
            bbox = (r_lo + int(rows[0]), c_lo + int(cols[0]), r_lo + int(rows[-1]) + 1, c_lo + int(cols[-1]) + 1)
            lesion_views[id(lesion)].append(MammoLesionView(
                sop_instance_uid=sop_uids[name], view=name[1:],
                center_px=(int(round(r0)), int(round(c0))), bbox_px=bbox))
    truth = MammoTruth(
        seed=seed, study_instance_uid=str(synth_uid(_KIND, seed, "study", size, *rounds)),
        sop_instance_uids=sop_uids, density=density, malignant=any(les.malignant for les in lesions),
        lesions=[MammoLesionTruth(type=les.type, shape=les.shape, laterality=les.laterality,
                                  malignant=les.malignant, size_mm=les.size_mm, views=lesion_views[id(les)],
                                  new_since_prior=id(les) in new_lesions)
                 for les in lesions],
        round=round_index,
    )
    return MammoPhantom(views=views, lesion_masks=masks, pixel_spacing_mm=spacing, bits_stored=bits_stored,
                        truth=truth, breast_masks=breasts, size=size)


def mammo_datasets(phantom: MammoPhantom) -> list[Dataset]:
    """Digital Mammography X-Ray Image Storage - For Presentation instances, LCC, LMLO, RCC, RMLO
    (PS3.3 A.26.1)."""
    truth = phantom.truth
    rounds = () if truth.round == 1 else (f"round-{truth.round}",)
    series_uid = synth_uid(_KIND, truth.seed, "series", phantom.size, *rounds)
    frame_uid = synth_uid(_KIND, truth.seed, "frame-of-reference", phantom.size, *rounds)
    spacing = f"{phantom.pixel_spacing_mm:g}"
    out = []
    for number, name in enumerate(VIEWS, start=1):
        pixels = phantom.views[name]
        side, view = name[0], name[1:]
        ds = base_dataset(_KIND, truth.seed, "MG", DigitalMammographyXRayImageStorageForPresentation,
                          truth.sop_instance_uids[name], truth.study_instance_uid, series_uid, 1, number,
                          "screening mammography (synthetic)")
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.BodyPartExamined = "BREAST"
        ds.ImageLaterality = side
        ds.ViewPosition = view
        ds.PatientOrientation = _ORIENTATION[name]
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.DetectorType = "DIRECT"
        ds.AcquisitionNumber = 1
        ds.ContentQualification = "RESEARCH"
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.QualityControlImage = "NO"
        ds.ProtocolName = "screening mammography"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = phantom.bits_stored
        ds.HighBit = phantom.bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        max_value = 2 ** phantom.bits_stored - 1
        ds.WindowCenter = f"{max_value * 0.45:.1f}"
        ds.WindowWidth = f"{max_value * 0.7:.1f}"
        ds.VOILUTFunction = "SIGMOID"
        ds.PresentationLUTShape = "IDENTITY"
        ds.PixelSpacing = [spacing, spacing]
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.KVP = 29
        ds.ExposureTime = 900
        ds.XRayTubeCurrent = 100
        ds.Exposure = 90
        ds.BodyPartThickness = 50
        ds.CompressionForce = 110
        ds.AnodeTargetMaterial = "TUNGSTEN"
        ds.FilterMaterial = "RHODIUM"
        ds.BreastImplantPresent = "NO"
        ds.PartialView = "NO"
        ds.OrganExposed = "BREAST"
        ds.EntranceDoseInmGy = 4.5
        ds.RelativeXRayExposure = 500
        ds.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
        view_item = _code(*_VIEW_CODES[view][:1], "SCT", _VIEW_CODES[view][1])
        view_item.ViewModifierCodeSequence = Sequence()
        ds.ViewCodeSequence = Sequence([view_item])
        ds.AcquisitionContextSequence = Sequence()
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


__all__ = ["MammoPhantom", "make_mammo_phantom", "mammo_datasets", "VIEWS", "DENSITIES"]
