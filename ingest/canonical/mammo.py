"""Mammography canonicalisation: what the models see, whatever the vendor wrote.

The models were trained on one convention, and every view is brought to it before preprocessing:

- Intensity: stored values through the modality LUT, scaled to [0, 1] by the declared bit depth
  (a linear Rescale Slope/Intercept cancels out of that scale), MONOCHROME1 inverted so that dense
  tissue is bright. A display VOI LUT (Window Center/Width, VOI LUT Sequence) is never applied: it
  is a viewing choice that differs between workstations, not a property of the breast.
- Orientation: the chest wall on the left image edge (column 0) and the rows running lateral ->
  medial on CC and superior -> inferior on MLO views, decided from Patient Orientation (0020,0020)
  (PS3.3 C.7.6.1.1.1); when it is absent, the chest-wall side comes from the image (the breast
  touches the chest-wall edge) and the rows are taken as stored.
- Extent and scale: the breast is segmented (a threshold between the background and the tissue
  levels, largest connected component), everything outside it becomes one background level, and a
  fixed physical field of 204.8 x 166.4 mm at 0.4 mm per model pixel is cut starting at the chest
  wall and centred on the breast vertically. The detector size and pixel pitch therefore do not
  change what the model sees. The pitch is Pixel Spacing (calibrated at the breast) or, without it,
  Imager Pixel Spacing divided by the Estimated Radiographic Magnification Factor.

The result per view is a ``MammoFrame``: a handful of numbers and a model-resolution breast mask,
applied to the pixels by the one preprocessing definition (ingest/preprocess/mammo.py, DALI for
serving and its numpy twin for training). Views the models cannot read are refused with a reason
(``refusal``); views that can be read but need a reader's eye (implants) say so (``review_reasons``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

from oncostream.errors import RejectedInstance

CANONICAL_SPACING_MM = 0.4
MODEL_SHAPE = (512, 416)  # rows, columns of the model input
FIELD_MM = (MODEL_SHAPE[0] * CANONICAL_SPACING_MM, MODEL_SHAPE[1] * CANONICAL_SPACING_MM)
# the level outside the breast, as a fraction of full scale: the training phantoms' air level
CANONICAL_BACKGROUND = 0.03
# fraction of the way from the background level to the tissue level where the breast starts
_TISSUE_FRACTION = 0.25
_FOR_PROCESSING_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2.1"
_SPOT = {codes.SCT.SpotCompression.value, "R-102D2"}
_MAGNIFICATION = {codes.SCT.Magnification.value, "R-102D6"}
_IMPLANT_DISPLACED = {codes.SCT.ImplantDisplaced.value, "R-102D4"}
# letters of Patient Orientation's second value that mean "rows run medially" on a CC view
_MEDIAL = {"L": "R", "R": "L"}


@dataclass(frozen=True)
class MammoFrame:
    """How one stored view becomes the model's canonical image.

    canonical(r, c) = mask * resample(flip(stored * gain + offset), roi) + (1 - mask) * background
    where ``flip`` mirrors rows and/or columns and ``roi`` is (row0, col0, row1, col1) in source
    pixel edges of the flipped image (pixel i spans [i, i + 1]); it may reach past the image.
    """

    gain: float
    offset: float
    flip_rows: bool
    flip_cols: bool
    roi: tuple[float, float, float, float]
    mask: np.ndarray  # uint8 [512, 416]: 1 inside the breast, in the canonical frame
    source_shape: tuple[int, int]
    orientation_source: str  # "PatientOrientation" | "image"

    @property
    def step(self) -> tuple[float, float]:
        """Source pixels per model pixel along rows and columns."""
        r0, c0, r1, c1 = self.roi
        return (r1 - r0) / MODEL_SHAPE[0], (c1 - c0) / MODEL_SHAPE[1]

    def model_to_source(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model pixel coordinates (centre convention, fractional allowed) -> the stored view's own
        pixel coordinates (centre convention)."""
        step_r, step_c = self.step
        r = self.roi[0] + (np.asarray(rows, np.float64) + 0.5) * step_r - 0.5
        c = self.roi[1] + (np.asarray(cols, np.float64) + 0.5) * step_c - 0.5
        if self.flip_rows:
            r = self.source_shape[0] - 1 - r
        if self.flip_cols:
            c = self.source_shape[1] - 1 - c
        return r, c

    def source_to_model(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`model_to_source`."""
        r, c = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        if self.flip_rows:
            r = self.source_shape[0] - 1 - r
        if self.flip_cols:
            c = self.source_shape[1] - 1 - c
        step_r, step_c = self.step
        return (r + 0.5 - self.roi[0]) / step_r - 0.5, (c + 0.5 - self.roi[1]) / step_c - 0.5


def _codes_of(ds: Dataset, sequence: str) -> set[str]:
    found = set()
    for item in ds.get(sequence, []) or []:
        found.add(str(item.get("CodeValue", "")))
        for modifier in item.get("ViewModifierCodeSequence", []) or []:
            found.add(str(modifier.get("CodeValue", "")))
    return found


def _view_modifiers(ds: Dataset) -> set[str]:
    return _codes_of(ds, "ViewCodeSequence") | _codes_of(ds, "ViewModifierCodeSequence")


def refusal(ds: Dataset) -> RejectedInstance | None:
    """Why the screening models cannot read this mammography image, or None when they can."""
    sop = str(ds.get("SOPInstanceUID", "")) or None
    intent = str(ds.get("PresentationIntentType", "")).upper()
    if str(ds.get("SOPClassUID", "")) == _FOR_PROCESSING_SOP_CLASS or intent == "FOR PROCESSING":
        return RejectedInstance(
            "for_processing", "a FOR PROCESSING (raw detector) image: the models read FOR PRESENTATION "
            "images only, and no vendor-neutral conversion is applied", sop)
    image_type = [str(v).upper() for v in ds.get("ImageType", []) or []]
    if "GENERATED_2D" in image_type or "TOMOSYNTHESIS" in image_type or "TOMO" in image_type:
        return RejectedInstance(
            "synthesised_2d", f"a 2D image synthesised from tomosynthesis (Image Type {'/'.join(image_type)}): "
            "the models were not validated on synthesised views", sop)
    modifiers = _view_modifiers(ds)
    if modifiers & _SPOT:
        return RejectedInstance("spot_compression", "a spot compression view: not a screening view", sop)
    if modifiers & _MAGNIFICATION:
        return RejectedInstance("magnification", "a magnification view: not a screening view", sop)
    if ds.get("ModalityLUTSequence"):
        return RejectedInstance(
            "modality_lut", "a Modality LUT Sequence: only a linear Rescale Slope/Intercept is supported", sop)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return RejectedInstance("photometric", f"photometric interpretation {photometric or '(absent)'}: "
                                "a mammogram is MONOCHROME1 or MONOCHROME2", sop)
    letters = _orientation_letters(ds)
    if letters is not None and ("A" in letters[0]) == ("P" in letters[0]):
        return RejectedInstance(
            "orientation", f"Patient Orientation {letters[0]}\\{letters[1]}: the chest wall is not on the left "
            "or right image edge (a rotated image is not supported)", sop)
    if _spacing_mm(ds) is None:
        return RejectedInstance("pixel_spacing", "no usable Pixel Spacing or Imager Pixel Spacing: the "
                                "breast's physical size cannot be known", sop)
    return None


# The intensity is stored / (2^BitsStored - 1) (``intensity``): an image whose values use far less of the
# declared range (12- or 14-bit content in a file declaring 16 bits stored, without a rescale) would be
# read 4-16x darker than anything the models saw (training images reach 80-100 % of their range: a
# mammogram's background or densest tissue reaches the top of it), so it is refused, not guessed.
MIN_RANGE_USED = 1 / 4  # two unused high bits


def range_refusal(ds: Dataset, stored: np.ndarray) -> RejectedInstance | None:
    """Refusal of a view whose stored values reach under MIN_RANGE_USED of what BitsStored declares."""
    full_scale = float(2 ** int(ds.BitsStored) - 1)
    top = float(np.max(stored)) if stored.size else 0.0
    if top >= MIN_RANGE_USED * full_scale:
        return None
    return RejectedInstance(
        "pixel_range", f"stored values reach {top:.0f} of the {full_scale:.0f} that Bits Stored {int(ds.BitsStored)} "
        f"declares: the image would be read {full_scale / max(top, 1.0):.0f}x darker than the models were "
        "trained on (Bits Stored overstated?)", str(ds.get("SOPInstanceUID", "")) or None)


def review_reasons(ds: Dataset) -> list[str]:
    """Reasons a reader must look at this view whatever the score (the models never saw them)."""
    reasons = []
    if str(ds.get("BreastImplantPresent", "")).upper() == "YES" or _view_modifiers(ds) & _IMPLANT_DISPLACED:
        reasons.append("breast implant")
    return reasons


def _spacing_mm(ds: Dataset) -> float | None:
    """Pixel pitch at the breast in mm (rows and columns are square on every mammography detector)."""
    try:
        if ds.get("PixelSpacing"):
            value = float(ds.PixelSpacing[0])
        elif ds.get("ImagerPixelSpacing"):
            magnification = float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)
            value = float(ds.ImagerPixelSpacing[0]) / magnification
        else:
            return None
    except (TypeError, ValueError, IndexError):
        return None
    return value if np.isfinite(value) and 0.01 <= value <= 1.0 else None


def intensity(ds: Dataset) -> tuple[float, float]:
    """(gain, offset) taking stored values to [0, 1], tissue bright."""
    full_scale = float(2 ** int(ds.BitsStored) - 1)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        return -1.0 / full_scale, 1.0
    return 1.0 / full_scale, 0.0


def _orientation_letters(ds: Dataset) -> tuple[str, str] | None:
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    rows, cols = (str(v).upper() for v in value)
    return rows, cols


def orientation(ds: Dataset, laterality: str, view: str, normalised: Callable[[], np.ndarray]
                ) -> tuple[bool, bool, str]:
    """(flip_rows, flip_cols, source) that put the chest wall on the left and rows in the canonical
    direction; ``normalised`` gives the (coarse) image, looked at only without Patient Orientation
    (``refusal`` has already turned away a rotated image)."""
    letters = _orientation_letters(ds)
    if letters is None:
        return False, _chest_wall_on_right(normalised()), "image"
    along_row, along_column = letters
    flip_cols = "P" in along_row
    if view == "MLO" and ("F" in along_column or "H" in along_column):
        flip_rows = "H" in along_column
    else:
        medial = _MEDIAL.get(laterality)
        flip_rows = medial is not None and medial not in along_column and _MEDIAL[medial] in along_column
    return flip_rows, flip_cols, "PatientOrientation"


def _chest_wall_on_right(normalised: np.ndarray) -> bool:
    """Without Patient Orientation: the breast touches the chest-wall edge along most of its height."""
    edge = max(1, normalised.shape[1] // 50)
    left, right = normalised[:, :edge].mean(), normalised[:, -edge:].mean()
    return bool(right > left)


def _coarse(normalised: np.ndarray, block: int) -> np.ndarray:
    """Block mean by ``block`` pixels (the edge remainder is dropped)."""
    rows, cols = (normalised.shape[0] // block) * block, (normalised.shape[1] // block) * block
    trimmed = normalised[:rows, :cols]
    return trimmed.reshape(rows // block, block, cols // block, block).mean(axis=(1, 3))


def breast_mask(image: np.ndarray) -> np.ndarray:
    """The breast in a (coarse) normalised image: above a level a quarter of the way from the
    background to the tissue (Otsu splits the two), largest component, holes filled."""
    values = image.ravel()
    histogram, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(histogram * centres) / np.maximum(weight_low, 1)
    total = (histogram * centres).sum()
    mean_high = (total - np.cumsum(histogram * centres)) / np.maximum(weight_high, 1)
    otsu = centres[int(np.argmax(weight_low * weight_high * (mean_low - mean_high) ** 2))]
    low, high = values[values <= otsu], values[values > otsu]
    if low.size == 0 or high.size == 0:
        return np.ones(image.shape, bool)
    threshold = np.median(low) + _TISSUE_FRACTION * (np.median(high) - np.median(low))
    labels, count = ndimage.label(image > threshold)
    if count == 0:
        return np.zeros(image.shape, bool)
    sizes = ndimage.sum_labels(np.ones(image.shape), labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def canonical_frame(ds: Dataset, stored: np.ndarray, laterality: str, view: str) -> MammoFrame:
    """The frame that takes this view to the canonical image. Raises RejectedInstance (``refusal``)."""
    problem = refusal(ds) or range_refusal(ds, stored)
    if problem is not None:
        raise problem
    spacing = _spacing_mm(ds)
    gain, offset = intensity(ds)
    step = CANONICAL_SPACING_MM / spacing
    block = max(1, int(round(step)))
    flip_rows, flip_cols, source = orientation(
        ds, laterality, view, lambda: _coarse(np.asarray(stored, np.float32), block) * np.float32(gain) + np.float32(offset))
    # flip the stored image before the block mean so a mirrored input gives an identical frame
    oriented = np.asarray(stored, np.float32)
    if flip_rows:
        oriented = oriented[::-1]
    if flip_cols:
        oriented = oriented[:, ::-1]
    coarse = _coarse(oriented, block) * np.float32(gain) + np.float32(offset)
    mask = breast_mask(coarse)
    if not mask.any():
        raise RejectedInstance("no_breast", "no breast tissue found above the background level",
                               str(ds.get("SOPInstanceUID", "")) or None)
    rows_in = np.flatnonzero(mask.any(axis=1))
    cols_in = np.flatnonzero(mask.any(axis=0))
    centre_row = (rows_in[0] + rows_in[-1] + 1) / 2.0 * block
    chest_wall = float(cols_in[0] * block)
    roi = (centre_row - MODEL_SHAPE[0] * step / 2.0, chest_wall,
           centre_row + MODEL_SHAPE[0] * step / 2.0, chest_wall + MODEL_SHAPE[1] * step)
    model_mask = _mask_in_model_grid(mask, block, roi, step)
    return MammoFrame(gain=gain, offset=offset, flip_rows=flip_rows, flip_cols=flip_cols, roi=roi,
                      mask=model_mask, source_shape=(int(stored.shape[0]), int(stored.shape[1])),
                      orientation_source=source)


def _mask_in_model_grid(mask: np.ndarray, block: int, roi: tuple[float, float, float, float],
                        step: float) -> np.ndarray:
    """The coarse mask sampled (nearest) at the model pixel centres, grown by one pixel so the skin
    line stays inside."""
    rows = (roi[0] + (np.arange(MODEL_SHAPE[0]) + 0.5) * step) / block - 0.5
    cols = (roi[1] + (np.arange(MODEL_SHAPE[1]) + 0.5) * step) / block - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    sampled = ndimage.map_coordinates(mask.astype(np.float32), grid, order=0, mode="constant", cval=0.0) > 0.5
    return ndimage.binary_dilation(sampled, iterations=1).astype(np.uint8)


def canonical_view_reference(stored: np.ndarray, frame: MammoFrame) -> np.ndarray:
    """Stored view -> flipped, normalised image (numpy; what the preprocessing resamples)."""
    image = np.asarray(stored, np.float32) * np.float32(frame.gain) + np.float32(frame.offset)
    if frame.flip_rows:
        image = image[::-1]
    if frame.flip_cols:
        image = image[:, ::-1]
    return image
