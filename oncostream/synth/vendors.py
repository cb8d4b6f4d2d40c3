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


def mg_sixteen_bits(datasets: list[Dataset]) -> list[Dataset]:
    """The same values rescaled to 16 stored bits (exact up to rounding)."""
    out = []
    for ds in datasets:
        scale = (2 ** 16 - 1) / (2 ** int(ds.BitsStored) - 1)
        new = _with_pixels(ds, np.rint(_pixels(ds) * scale))
        new.BitsStored, new.HighBit = 16, 15
        for name in ("WindowCenter", "WindowWidth"):
            if name in ds:
                setattr(new, name, f"{float(getattr(ds, name)) * scale:.1f}")
        out.append(new)
    return out


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


def ct_reverse_order(datasets: list[Dataset]) -> list[Dataset]:
    """Instance numbers reversed (exact)."""
    out = [copy.deepcopy(ds) for ds in datasets]
    for ds, number in zip(out, reversed([int(d.InstanceNumber) for d in datasets])):
        ds.InstanceNumber = number
    return out


def ct_thick_slices(datasets: list[Dataset], factor: int = 2) -> list[Dataset]:
    """Adjacent groups of ``factor`` slices averaged (1.25 mm -> 2.5 mm): a thicker reconstruction of
    the same scan, positioned at each group's centre (resampling)."""
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    out = []
    for start in range(0, len(ordered) - factor + 1, factor):
        group = ordered[start:start + factor]
        mean = np.mean([_pixels(d).astype(np.float64) for d in group], axis=0)
        new = _with_pixels(group[0], np.rint(mean))
        positions = np.mean([np.asarray(d.ImagePositionPatient, np.float64) for d in group], axis=0)
        new.ImagePositionPatient = [f"{v:.6g}" for v in positions]
        thickness = float(group[0].get("SliceThickness", 1.0) or 1.0) * factor
        new.SliceThickness = f"{thickness:g}"
        new.SpacingBetweenSlices = f"{thickness:g}"
        new.ImagesInAcquisition = len(ordered) // factor
        new.SOPInstanceUID = derived_uid(group[0].SOPInstanceUID, "thick")
        new.SeriesInstanceUID = derived_uid(group[0].SeriesInstanceUID, "thick")
        new.InstanceNumber = start // factor + 1
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
}
MAMMO_RESAMPLING: dict[str, Transform] = {
    "burned_in_marker": mg_burned_in_marker,
    "larger_detector": mg_larger_detector,
    "pixel_pitch_0.085": mg_pixel_pitch,
}
CT_EXACT: dict[str, Transform] = {
    "mirror_columns": ct_mirror_columns,
    "transpose": ct_transpose,
    "reverse_order": ct_reverse_order,
}
CT_RESAMPLING: dict[str, Transform] = {
    "thick_2.5mm": ct_thick_slices,
    "pixel_spacing_0.6mm": ct_pixel_spacing,
}


def _unchanged(datasets: list[Dataset]) -> list[Dataset]:
    return datasets


# every profile `oncostream eval --profile` knows, by modality
MAMMO_PROFILES: dict[str, Transform] = {"default": _unchanged, **MAMMO_EXACT, **MAMMO_RESAMPLING}
CT_PROFILES: dict[str, Transform] = {"default": _unchanged, **CT_EXACT, **CT_RESAMPLING}
