"""Vendor re-expressions: the same anatomy written the way other scanners write it.

Each transform takes the datasets of one study (pixels decoded into ``PixelData`` as native little
endian) and returns new datasets that describe the same anatomy in patient space with other DICOM:
the metamorphic conformance suite (tests/conformance) checks that the triage answer does not move,
and ``oncostream eval --profile`` measures the models on each profile.

Exact transforms keep every pixel value (inversion, mirroring with the orientation updated, bit
depth scaling, display attributes, reordering); resampling transforms change the sampling
(detector size, pixel pitch, slice thickness) and so may move measurements a little.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

Transform = Callable[[list[Dataset]], list[Dataset]]
_SWAP = str.maketrans("APLRHF", "PARLFH")


def _pixels(ds: Dataset) -> np.ndarray:
    return ds.pixel_array


def _with_pixels(ds: Dataset, pixels: np.ndarray) -> Dataset:
    out = copy.deepcopy(ds)
    pixels = np.ascontiguousarray(pixels)
    out.Rows, out.Columns = pixels.shape
    dtype = np.int16 if int(out.PixelRepresentation) == 1 else np.uint16
    out.PixelData = pixels.astype(dtype).tobytes()
    return out


def derived_uid(uid: str, role: str) -> str:
    """A new UID for an object derived from ``uid`` (deterministic, valid length)."""
    return str(generate_uid(entropy_srcs=[str(uid), role]))


def _swap_letters(value: str) -> str:
    return value.translate(_SWAP)


# --- mammography ---------------------------------------------------------------------------------

def mg_monochrome1(datasets: list[Dataset]) -> list[Dataset]:
    """Stored = max - stored, PhotometricInterpretation MONOCHROME1 (exact)."""
    out = []
    for ds in datasets:
        full = 2 ** int(ds.BitsStored) - 1
        new = _with_pixels(ds, full - _pixels(ds).astype(np.int64))
        new.PhotometricInterpretation = "MONOCHROME1"
        if "WindowCenter" in ds:
            new.WindowCenter = f"{full - float(ds.WindowCenter):.1f}"
        out.append(new)
    return out


def mg_mirror_columns(datasets: list[Dataset]) -> list[Dataset]:
    """Columns mirrored, Patient Orientation's row letter swapped (the chest wall on the other side; exact)."""
    out = []
    for ds in datasets:
        new = _with_pixels(ds, _pixels(ds)[:, ::-1])
        rows, cols = ds.PatientOrientation
        new.PatientOrientation = [_swap_letters(str(rows)), str(cols)]
        out.append(new)
    return out


def mg_mirror_rows(datasets: list[Dataset]) -> list[Dataset]:
    """Rows mirrored, Patient Orientation's column letter swapped (upside down; exact)."""
    out = []
    for ds in datasets:
        new = _with_pixels(ds, _pixels(ds)[::-1])
        rows, cols = ds.PatientOrientation
        new.PatientOrientation = [str(rows), _swap_letters(str(cols))]
        out.append(new)
    return out


def _rescaled_bits(datasets: list[Dataset], bits: int) -> list[Dataset]:
    """The same values rescaled to ``bits`` stored bits (rounded), the window scaled alike."""
    out = []
    for ds in datasets:
        scale = (2 ** bits - 1) / (2 ** int(ds.BitsStored) - 1)
        new = _with_pixels(ds, np.rint(_pixels(ds) * scale))
        new.BitsStored, new.HighBit = bits, bits - 1
        for name in ("WindowCenter", "WindowWidth"):
            if name in ds:
                setattr(new, name, f"{float(getattr(ds, name)) * scale:.1f}")
        out.append(new)
    return out


def mg_sixteen_bits(datasets: list[Dataset]) -> list[Dataset]:
    """The same values rescaled to 16 stored bits (exact up to rounding)."""
    return _rescaled_bits(datasets, 16)


def mg_display_attributes(datasets: list[Dataset]) -> list[Dataset]:
    """Another vendor's display choices: other window, a LINEAR VOI function, no Presentation LUT Shape (exact)."""
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        full = 2 ** int(ds.BitsStored) - 1
        new.WindowCenter, new.WindowWidth = f"{full * 0.3:.1f}", f"{full * 0.4:.1f}"
        new.VOILUTFunction = "LINEAR"
        if "PresentationLUTShape" in new:
            del new.PresentationLUTShape
        out.append(new)
    return out


def mg_coded_view_only(datasets: list[Dataset]) -> list[Dataset]:
    """View Position left out (Type 3; some modalities write only the Type 1 View Code Sequence), the
    view codes in their older SNOMED-RT form (exact)."""
    legacy = {"399162004": "R-10242", "399368009": "R-10226"}
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        del new.ViewPosition
        for item in new.ViewCodeSequence:
            item.CodeValue, item.CodingSchemeDesignator = legacy[item.CodeValue], "SRT"
        out.append(new)
    return out


def mg_larger_detector(datasets: list[Dataset], margin_mm: tuple[float, float, float] = (30.0, 50.0, 30.0)
                       ) -> list[Dataset]:
    """The same breast on a larger detector: (top, far side, bottom) margins of zero signal added,
    the chest wall still at its edge (resampling-free, but the field is larger)."""
    out = []
    for ds in datasets:
        spacing = float(ds.PixelSpacing[0])
        top, side, bottom = (int(round(m / spacing)) for m in margin_mm)
        pixels = _pixels(ds)
        chest_wall_left = "A" in str(ds.PatientOrientation[0])
        pad_cols = (0, side) if chest_wall_left else (side, 0)
        background = 0 if str(ds.PhotometricInterpretation) == "MONOCHROME2" else 2 ** int(ds.BitsStored) - 1
        out.append(_with_pixels(ds, np.pad(pixels, ((top, bottom), pad_cols), constant_values=background)))
    return out


def mg_burned_in_marker(datasets: list[Dataset]) -> list[Dataset]:
    """A burned-in view marker ("LCC"): a bright block of text-like strokes in the corner away from
    the chest wall, as many vendors print it into For Presentation images."""
    out = []
    for ds in datasets:
        pixels = _pixels(ds).copy()
        spacing = float(ds.PixelSpacing[0])
        size = int(round(12.0 / spacing))
        top = int(round(8.0 / spacing))
        chest_wall_left = "A" in str(ds.PatientOrientation[0])
        cols = slice(pixels.shape[1] - top - 3 * size, pixels.shape[1] - top) if chest_wall_left else slice(top, top + 3 * size)
        block = pixels[top:top + size, cols]
        strokes = np.zeros(block.shape, bool)
        strokes[:, :: max(2, size // 6)] = True
        strokes[:: max(2, size // 4), :] = True
        full = 2 ** int(ds.BitsStored) - 1
        block[strokes] = full if str(ds.PhotometricInterpretation) == "MONOCHROME2" else 0
        out.append(_with_pixels(ds, pixels))
    return out


def mg_twelve_bits(datasets: list[Dataset]) -> list[Dataset]:
    """The same values rescaled to 12 stored bits (rounded: fewer grey levels, so a resampling of the
    intensities, not an exact re-expression)."""
    return _rescaled_bits(datasets, 12)


def mg_voi_lut_sequence(datasets: list[Dataset]) -> list[Dataset]:
    """A display VOI LUT Sequence (a 4096-entry gamma table) instead of a window: a display choice the
    models must never see (exact)."""
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        entries = 2 ** int(ds.BitsStored)
        table = Dataset()
        table.LUTDescriptor = [entries % 65536, 0, 16]  # 65536 entries are written as 0 (PS3.3 C.11.2.1.1)
        table.add_new(0x00283006, "OW", (np.linspace(0.0, 1.0, entries) ** 0.5 * 65535).astype("<u2").tobytes())
        table.LUTExplanation = "vendor display gamma"
        new.VOILUTSequence = [table]
        for name in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction"):
            if name in new:
                delattr(new, name)
        out.append(new)
    return out


def mg_pixel_pitch(datasets: list[Dataset], spacing_mm: float = 0.085) -> list[Dataset]:
    """The same breast sampled at another detector pitch (cubic resampling; Pixel and Imager Pixel
    Spacing updated)."""
    out = []
    for ds in datasets:
        old = float(ds.PixelSpacing[0])
        pixels = _pixels(ds).astype(np.float32)
        resampled = ndimage.zoom(pixels, old / spacing_mm, order=1, grid_mode=True, mode="nearest")
        full = 2 ** int(ds.BitsStored) - 1
        new = _with_pixels(ds, np.clip(np.rint(resampled), 0, full))
        new.PixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
        new.ImagerPixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
        out.append(new)
    return out


# --- CT ------------------------------------------------------------------------------------------

def ct_mirror_columns(datasets: list[Dataset]) -> list[Dataset]:
    """Columns mirrored, the row direction cosine negated and ImagePositionPatient moved to the new
    first column: identical voxels in patient space (exact)."""
    out = []
    for ds in datasets:
        iop = np.asarray(ds.ImageOrientationPatient, np.float64)
        ipp = np.asarray(ds.ImagePositionPatient, np.float64)
        width = (int(ds.Columns) - 1) * float(ds.PixelSpacing[1])
        new = _with_pixels(ds, _pixels(ds)[:, ::-1])
        new.ImagePositionPatient = [f"{v:.6g}" for v in ipp + iop[:3] * width]
        new.ImageOrientationPatient = [f"{v:g}" for v in (*(-iop[:3]), *iop[3:])]
        out.append(new)
    return out


def ct_transpose(datasets: list[Dataset]) -> list[Dataset]:
    """Rows and columns swapped, the two direction cosines swapped (exact; the slice normal flips, so
    the series is stored feet-first along its own normal)."""
    out = []
    for ds in datasets:
        iop = np.asarray(ds.ImageOrientationPatient, np.float64)
        new = _with_pixels(ds, _pixels(ds).T)
        new.ImageOrientationPatient = [f"{v:g}" for v in (*iop[3:], *iop[:3])]
        row_spacing, col_spacing = ds.PixelSpacing
        new.PixelSpacing = [col_spacing, row_spacing]
        out.append(new)
    return out


def ct_mirror_rows(datasets: list[Dataset]) -> list[Dataset]:
    """Rows mirrored, the column direction cosine negated and ImagePositionPatient moved to the new
    first row (a posterior-to-anterior row order, as a prone scan is written; exact)."""
    out = []
    for ds in datasets:
        iop = np.asarray(ds.ImageOrientationPatient, np.float64)
        ipp = np.asarray(ds.ImagePositionPatient, np.float64)
        height = (int(ds.Rows) - 1) * float(ds.PixelSpacing[0])
        new = _with_pixels(ds, _pixels(ds)[::-1])
        new.ImagePositionPatient = [f"{v:.6g}" for v in ipp + iop[3:] * height]
        new.ImageOrientationPatient = [f"{v:g}" for v in (*iop[:3], *(-iop[3:]))]
        out.append(new)
    return out


def ct_feet_first(datasets: list[Dataset]) -> list[Dataset]:
    """As a feet-first supine scan is written: Image Orientation (Patient) -1, 0, 0, 0, 1, 0 and
    the instances numbered from the feet (exact)."""
    return ct_reverse_order(ct_mirror_columns(datasets))


def ct_rescale(datasets: list[Dataset]) -> list[Dataset]:
    """Signed storage at Rescale Slope 0.5, Rescale Intercept 0 (twice the HU stored; exact)."""
    out = []
    for ds in datasets:
        hu = _pixels(ds).astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        signed = copy.deepcopy(ds)
        signed.PixelRepresentation = 1
        new = _with_pixels(signed, np.rint(hu * 2.0))
        new.RescaleSlope, new.RescaleIntercept = "0.5", "0"
        out.append(new)
    return out


def ct_cosine_rounding(datasets: list[Dataset]) -> list[Dataset]:
    """Direction cosines a few thousandths off the axes, as scanners write them from their own
    calibration (0.06 degrees: read as axis-aligned, not refused as oblique)."""
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        new.ImageOrientationPatient = ["0.999999", "0.001", "0", "-0.001", "0.999999", "0.0001"]
        out.append(new)
    return out


def ct_reverse_order(datasets: list[Dataset]) -> list[Dataset]:
    """Instance numbers reversed (exact)."""
    out = [copy.deepcopy(ds) for ds in datasets]
    for ds, number in zip(out, reversed([int(d.InstanceNumber) for d in datasets])):
        ds.InstanceNumber = number
    return out


def ct_fov_padding(datasets: list[Dataset], padding_hu: float = -3024.0) -> list[Dataset]:
    """Signed storage with the pixels outside the circular reconstruction field of view written as a
    padding value (Pixel Padding Value), as several CT vendors store them: -3024 HU where the phantom
    has air. Every voxel inside the circle is unchanged (the phantoms' bodies lie inside it)."""
    out = []
    for ds in datasets:
        hu = _pixels(ds).astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        rows, cols = hu.shape
        yy, xx = np.mgrid[:rows, :cols]
        outside = (yy - (rows - 1) / 2) ** 2 + (xx - (cols - 1) / 2) ** 2 > (min(rows, cols) / 2) ** 2
        stored = np.rint((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        padding = int(round((padding_hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)))
        stored[outside] = padding
        signed = copy.deepcopy(ds)
        signed.PixelRepresentation = 1
        new = _with_pixels(signed, stored)
        new.add_new(0x00280120, "SS", padding)  # Pixel Padding Value
        out.append(new)
    return out


def average_slices(volume: np.ndarray, factor: int) -> np.ndarray:
    """Adjacent groups of ``factor`` slices (axis 0) averaged: the thicker reconstruction of the same
    scan (a trailing partial group is dropped)."""
    usable = (volume.shape[0] // factor) * factor
    grouped = volume[:usable].astype(np.float32).reshape(-1, factor, *volume.shape[1:])
    return grouped.mean(axis=1)


def kernel_filter(image: np.ndarray, pixel_mm: float, strength_mm: float) -> np.ndarray:
    """Another reconstruction kernel's texture on axial slices (the last two axes): a smooth kernel
    (``strength_mm`` < 0: a Gaussian of that many mm) or a sharp one (> 0: unsharp masking by that
    weight over a 0.7 mm Gaussian), which changes noise texture and edge sharpness as vendors' soft
    and lung kernels do."""
    in_plane_mm = abs(strength_mm) if strength_mm < 0 else 0.7
    sigma = [0.0] * (image.ndim - 2) + [in_plane_mm / pixel_mm] * 2
    blurred = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    if strength_mm < 0:
        return blurred
    return image + strength_mm * (image - blurred)


def ct_thick_slices(datasets: list[Dataset], factor: int = 2) -> list[Dataset]:
    """Adjacent groups of ``factor`` slices averaged (1.25 mm -> 2.5 mm): a thicker reconstruction of
    the same scan, positioned at each group's centre (resampling)."""
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    thick = average_slices(np.stack([_pixels(d) for d in ordered]), factor)
    out = []
    for index, pixels in enumerate(thick):
        group = ordered[index * factor:(index + 1) * factor]
        new = _with_pixels(group[0], np.rint(pixels))
        positions = np.mean([np.asarray(d.ImagePositionPatient, np.float64) for d in group], axis=0)
        new.ImagePositionPatient = [f"{v:.6g}" for v in positions]
        thickness = float(group[0].get("SliceThickness", 1.0) or 1.0) * factor
        new.SliceThickness = f"{thickness:g}"
        new.SpacingBetweenSlices = f"{thickness:g}"
        new.ImagesInAcquisition = len(thick)
        new.SOPInstanceUID = derived_uid(group[0].SOPInstanceUID, "thick")
        new.SeriesInstanceUID = derived_uid(group[0].SeriesInstanceUID, "thick")
        new.InstanceNumber = index + 1
        out.append(new)
    return out


def ct_kernel(datasets: list[Dataset], strength_mm: float) -> list[Dataset]:
    """The same scan reconstructed with a smoother (< 0) or sharper (> 0) kernel (``kernel_filter``)
    as a new series; ConvolutionKernel says which (resampling: the voxels change, the anatomy not)."""
    out = []
    for ds in datasets:
        pixels = kernel_filter(_pixels(ds)[None], float(ds.PixelSpacing[0]), strength_mm)[0]
        info = np.iinfo(np.int16 if int(ds.PixelRepresentation) == 1 else np.uint16)
        new = _with_pixels(ds, np.clip(np.rint(pixels), info.min, info.max))
        new.ConvolutionKernel = "SMOOTH" if strength_mm < 0 else "SHARP"
        new.SOPInstanceUID = derived_uid(ds.SOPInstanceUID, f"kernel{strength_mm:g}")
        new.SeriesInstanceUID = derived_uid(ds.SeriesInstanceUID, f"kernel{strength_mm:g}")
        out.append(new)
    return out


def ct_pixel_spacing(datasets: list[Dataset], spacing_mm: float = 0.6) -> list[Dataset]:
    """The same field of view reconstructed on a finer in-plane grid (linear resampling; the first
    pixel's centre kept, so ImagePositionPatient is unchanged)."""
    out = []
    for ds in datasets:
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        rows = int(round((int(ds.Rows) - 1) * row_spacing / spacing_mm)) + 1
        cols = int(round((int(ds.Columns) - 1) * col_spacing / spacing_mm)) + 1
        r = np.arange(rows) * spacing_mm / row_spacing
        c = np.arange(cols) * spacing_mm / col_spacing
        grid = np.meshgrid(r, c, indexing="ij")
        resampled = ndimage.map_coordinates(_pixels(ds).astype(np.float32), grid, order=1, mode="nearest")
        new = _with_pixels(ds, np.rint(resampled))
        new.PixelSpacing = [f"{spacing_mm:g}", f"{spacing_mm:g}"]
        out.append(new)
    return out


MAMMO_EXACT: dict[str, Transform] = {
    "monochrome1": mg_monochrome1,
    "mirror_columns": mg_mirror_columns,
    "mirror_rows": mg_mirror_rows,
    "sixteen_bits": mg_sixteen_bits,
    "display_attributes": mg_display_attributes,
    "coded_view_only": mg_coded_view_only,
    "voi_lut_sequence": mg_voi_lut_sequence,
}
MAMMO_RESAMPLING: dict[str, Transform] = {
    "burned_in_marker": mg_burned_in_marker,
    "larger_detector": mg_larger_detector,
    "pixel_pitch_0.085": mg_pixel_pitch,
    "pixel_pitch_0.05": lambda datasets: mg_pixel_pitch(datasets, 0.05),
    "twelve_bits": mg_twelve_bits,
}
CT_EXACT: dict[str, Transform] = {
    "mirror_columns": ct_mirror_columns,
    "mirror_rows": ct_mirror_rows,
    "transpose": ct_transpose,
    "reverse_order": ct_reverse_order,
    "feet_first": ct_feet_first,
    "fov_padding": ct_fov_padding,
    "rescale": ct_rescale,
    "cosine_rounding": ct_cosine_rounding,
}
CT_RESAMPLING: dict[str, Transform] = {
    "thick_2.5mm": ct_thick_slices,
    "pixel_spacing_0.6mm": ct_pixel_spacing,
    "smooth_kernel": lambda datasets: ct_kernel(datasets, -0.8),
    "sharp_kernel": lambda datasets: ct_kernel(datasets, 0.6),
}


def _unchanged(datasets: list[Dataset]) -> list[Dataset]:
    return datasets


# every profile `oncostream eval --profile` knows, by modality
MAMMO_PROFILES: dict[str, Transform] = {"default": _unchanged, **MAMMO_EXACT, **MAMMO_RESAMPLING}
CT_PROFILES: dict[str, Transform] = {"default": _unchanged, **CT_EXACT, **CT_RESAMPLING}


# --- domain randomisation: the variation training sees (training/mammo_data.py, training/ldct_data.py)

@dataclass(frozen=True)
class MammoVendorDraw:
    """One exam's vendor re-expression, drawn at random: geometric parts (mirrors, detector margins,
    pitch) apply to the image and to its lesion masks alike; photometric parts only to the image."""

    mirror_columns: bool
    mirror_rows: bool
    margins_mm: tuple[float, float, float] | None
    pitch_factor: float | None  # new pitch / stored pitch, < 1: a finer detector
    marker: bool
    sixteen_bits: bool
    display_attributes: bool
    monochrome1: bool

    def geometry(self, datasets: list[Dataset]) -> list[Dataset]:
        if self.mirror_columns:
            datasets = mg_mirror_columns(datasets)
        if self.mirror_rows:
            datasets = mg_mirror_rows(datasets)
        if self.margins_mm is not None:
            datasets = mg_larger_detector(datasets, self.margins_mm)
        if self.pitch_factor is not None:
            datasets = [mg_pixel_pitch([ds], float(ds.PixelSpacing[0]) * self.pitch_factor)[0] for ds in datasets]
        return datasets

    def image(self, datasets: list[Dataset]) -> list[Dataset]:
        datasets = self.geometry(datasets)
        for applies, transform in ((self.marker, mg_burned_in_marker), (self.sixteen_bits, mg_sixteen_bits),
                                   (self.display_attributes, mg_display_attributes),
                                   (self.monochrome1, mg_monochrome1)):
            if applies:
                datasets = transform(datasets)
        return datasets


def draw_mammo_vendor(rng: np.random.Generator) -> MammoVendorDraw:
    """Half the exams keep the generator's own detector; the rest get a larger field and/or a finer
    pitch (0.7-1.0 of the stored one); every flag is a fair coin or rarer."""
    margins = tuple(float(v) for v in rng.uniform(0.0, 50.0, 3)) if rng.random() < 0.4 else None
    pitch = float(rng.uniform(0.7, 1.0)) if rng.random() < 0.4 else None
    return MammoVendorDraw(
        mirror_columns=bool(rng.random() < 0.5), mirror_rows=bool(rng.random() < 0.25),
        margins_mm=margins, pitch_factor=pitch, marker=bool(rng.random() < 0.3),
        sixteen_bits=bool(rng.random() < 0.3), display_attributes=bool(rng.random() < 0.5),
        monochrome1=bool(rng.random() < 0.3))


@dataclass(frozen=True)
class CtVendorDraw:
    """One series' reconstruction, drawn at random: slice thickness (groups of ``slice_factor``
    slices averaged) and kernel texture (``kernel_filter``), applied to every volume of a phantom."""

    slice_factor: int
    kernel_mm: float  # 0: the generator's own kernel

    def volume(self, volume: np.ndarray, pixel_mm: float) -> np.ndarray:
        out = average_slices(volume, self.slice_factor) if self.slice_factor > 1 else volume.astype(np.float32)
        return kernel_filter(out, pixel_mm, self.kernel_mm) if self.kernel_mm else out

    def spacing_and_origin(self, spacing_mm, origin_mm):
        """(slice, row, column) spacing and (x, y, z) origin of the thicker series: a group is
        positioned at its centre."""
        dz, dy, dx = spacing_mm
        x, y, z = origin_mm
        return (dz * self.slice_factor, dy, dx), (x, y, z + dz * (self.slice_factor - 1) / 2.0)


def draw_ct_vendor(rng: np.random.Generator, slice_mm: float) -> CtVendorDraw:
    """Thicker slices (up to 2.5 mm) for a third of the series; a smooth or sharp kernel for two thirds."""
    factor = 2 if slice_mm * 2 <= 2.5 and rng.random() < 0.35 else 1
    kernel = float(rng.choice([-0.8, -0.4, 0.0, 0.3, 0.6]))
    return CtVendorDraw(slice_factor=factor, kernel_mm=kernel)
