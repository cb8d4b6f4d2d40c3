"""Parse and validate one DICOM instance, route it by SOP class, and decode its pixels.

Parsing is strict about what the pipeline relies on (a Part 10 file, the identifying UIDs, an
image pixel module, pixel data long enough for the declared geometry) and rejects anything else
with a RejectedInstance carrying a machine-readable reason. Decoding is lenient: every available
decoder is tried in turn, and only when all fail does one UnsupportedTransferSyntax list why each
failed (the pydicom ``pixels/decoders`` shape).
"""

from __future__ import annotations

import io
import logging
import warnings
from abc import ABC, abstractmethod

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from oncostream.errors import RejectedInstance, UnsupportedTransferSyntax

LOG = logging.getLogger(__name__)

# PS3.4 B.5 Standard SOP Classes: the image storage classes each pipeline accepts
SOP_CLASS_ROUTES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",  # Digital Mammography X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",  # Digital Mammography X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.2": "CT",  # CT Image Storage (Enhanced CT is out of scope)
}

# attributes every routed instance needs before assembly can place it
_REQUIRED_ATTRIBUTES = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)

_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF


def parse_instance(data: bytes, *, max_bytes: int) -> pydicom.Dataset:
    """Parse Part 10 bytes into a Dataset that assembly and decoding can rely on.

    Raises RejectedInstance with reason ``oversize``, ``not_dicom``, ``truncated``,
    ``unknown_sop_class``, ``missing_attribute``, ``missing_pixel_data`` or ``short_pixel_data``.
    Never raises anything else, whatever the bytes.
    """
    if len(data) > max_bytes:
        raise RejectedInstance("oversize", f"instance is {len(data)} bytes, above the limit of {max_bytes} bytes")
    ds = _read(data)
    sop_instance_uid = _text(ds, "SOPInstanceUID")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd value of untrusted input
            _check_truncation(ds, len(data), sop_instance_uid)
            route(ds)
            _check_required(ds, sop_instance_uid)
            _check_pixel_data(ds, sop_instance_uid)
    except RejectedInstance:
        raise
    except Exception as exc:  # malformed values surface lazily, on first access
        raise RejectedInstance(
            "malformed", f"cannot read attribute values: {type(exc).__name__}: {exc}", sop_instance_uid
        ) from exc
    return ds


def route(ds: pydicom.Dataset) -> str:
    """The pipeline ("MG" or "CT") for this instance's SOP Class UID."""
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID")
    pipeline = SOP_CLASS_ROUTES.get(sop_class or "")
    if pipeline is None:
        name = UID(sop_class).name if sop_class else "none"
        raise RejectedInstance(
            "unknown_sop_class", f"SOP class {sop_class or '(absent)'} ({name}) is not routed to any pipeline",
            _text(ds, "SOPInstanceUID"),
        )
    return pipeline


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixel values, the same shape and dtype as pydicom's ``ds.pixel_array``.

    Tries each available decoder that supports the transfer syntax, first success wins; raises
    UnsupportedTransferSyntax naming the syntax and each decoder's failure.
    """
    tsyntax = _transfer_syntax(ds)
    failures: dict[str, str] = {}
    for decoder in DECODERS:
        if not decoder.supports(ds, tsyntax):
            continue
        if not decoder.is_available():
            failures[decoder.name] = f"unavailable: {decoder.unavailable_reason()}"
            continue
        try:
            return decoder.decode(ds)
        except Exception as exc:  # each decoder fails in its own way; all are reported together
            failures[decoder.name] = f"{type(exc).__name__}: {exc}"
    raise UnsupportedTransferSyntax(str(tsyntax), tsyntax.name if tsyntax.is_valid else "unknown",
                                    failures, _text(ds, "SOPInstanceUID"))


class PixelDecoder(ABC):
    """One way of turning a Dataset's PixelData into an array; says why when it cannot run here."""

    name: str

    @abstractmethod
    def supports(self, ds: pydicom.Dataset, tsyntax: UID) -> bool:
        """Whether this decoder is meant for this dataset and transfer syntax."""

    @abstractmethod
    def is_available(self) -> bool:
        """Whether the libraries this decoder needs are importable here."""

    @abstractmethod
    def unavailable_reason(self) -> str:
        """The missing dependency, when ``is_available`` is False."""

    @abstractmethod
    def decode(self, ds: pydicom.Dataset) -> np.ndarray:
        """The array, matching pydicom's pixel_array in shape and dtype."""


class PydicomPluginDecoder(PixelDecoder):
    """pydicom's own decoder for a transfer syntax, pinned to one plugin (``pydicom`` = built in)."""

    def __init__(self, plugin: str):
        self.plugin = plugin
        self.name = f"pydicom/{plugin}"

    def supports(self, ds: pydicom.Dataset, tsyntax: UID) -> bool:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            return False
        if tsyntax.is_compressed:
            return self.plugin in decoder._available or self.plugin in decoder._unavailable
        return self.plugin == "pydicom"

    def is_available(self) -> bool:
        return True  # availability is per syntax; unavailable plugins fail in decode with their reason

    def unavailable_reason(self) -> str:
        return ""

    def decode(self, ds: pydicom.Dataset) -> np.ndarray:
        tsyntax = _transfer_syntax(ds)
        if tsyntax.is_compressed:
            decoder = get_decoder(tsyntax)
            if self.plugin in decoder._unavailable:
                raise ImportError("missing " + ", ".join(decoder._unavailable[self.plugin]))
            return pydicom.pixels.pixel_array(ds, decoding_plugin=self.plugin)
        return pydicom.pixels.pixel_array(ds)


def _pydicom_plugins() -> list[str]:
    """Every plugin name pydicom knows for any syntax, preferring the ones pydicom itself prefers."""
    names: list[str] = ["pydicom"]
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    for decoder, _ in _PIXEL_DATA_DECODERS.values():
        for plugin in [*decoder._available, *decoder._unavailable]:
            if plugin not in names:
                names.append(plugin)
    return names


DECODERS: list[PixelDecoder] = [PydicomPluginDecoder(name) for name in _pydicom_plugins()]


def _read(data: bytes) -> pydicom.Dataset:
    """dcmread, with pydicom's every failure mapped to not_dicom or truncated."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise RejectedInstance("not_dicom", f"not a DICOM Part 10 file: {exc}") from exc
    except (EOFError, OSError) as exc:
        raise RejectedInstance("truncated", f"file ends inside its header: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on garbage after a valid preamble
        raise RejectedInstance("not_dicom", f"cannot parse as DICOM: {type(exc).__name__}: {exc}") from exc
    for warning in caught:
        if "End of file reached" in str(warning.message):
            raise RejectedInstance("truncated", f"file ends early: {warning.message}", _text(ds, "SOPInstanceUID"))
    return ds


def _check_truncation(ds: pydicom.Dataset, size: int, sop_instance_uid: str | None) -> None:
    """The file was cut off if a value is shorter than its declared length, or if bytes are left
    after the last element (pydicom stops silently when fewer than a header's 8 bytes remain)."""
    tags = list(ds.keys())
    if tags:
        last = ds.get_item(tags[-1])
        if (isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH
                and last.value_tell + last.length < size):
            raise RejectedInstance(
                "truncated", f"file ends inside the header of the element after {last.tag}", sop_instance_uid
            )
    for tag in tags:
        element = ds.get_item(tag)
        if not isinstance(element, RawDataElement) or element.value is None:
            continue
        if element.length != _UNDEFINED_LENGTH and len(element.value) < element.length:
            raise RejectedInstance(
                "truncated",
                f"file ends inside element {element.tag}: {len(element.value)} of {element.length} bytes present",
                sop_instance_uid,
            )


def _check_required(ds: pydicom.Dataset, sop_instance_uid: str | None) -> None:
    missing = [keyword for keyword in _REQUIRED_ATTRIBUTES if ds.get(keyword) in (None, "")]
    if missing:
        raise RejectedInstance("missing_attribute", "missing required attribute(s): " + ", ".join(missing),
                               sop_instance_uid)


def _check_pixel_data(ds: pydicom.Dataset, sop_instance_uid: str | None) -> None:
    """Native pixel data must cover the declared geometry; encapsulated data must hold a fragment."""
    if _PIXEL_DATA_TAG not in ds or not ds.get_item(_PIXEL_DATA_TAG).value:
        raise RejectedInstance("missing_pixel_data", "instance has no Pixel Data (7FE0,0010)", sop_instance_uid)
    raw = ds.get_item(_PIXEL_DATA_TAG)
    present = len(raw.value)
    frames = _number_of_frames(ds)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    if rows <= 0 or columns <= 0 or bits not in (1, 8, 16, 32, 64):
        raise RejectedInstance("missing_attribute",
                               f"invalid image geometry: Rows={rows}, Columns={columns}, BitsAllocated={bits}",
                               sop_instance_uid)
    if _transfer_syntax(ds).is_compressed:
        if raw.length != _UNDEFINED_LENGTH and not _transfer_syntax(ds).is_deflated:
            raise RejectedInstance("short_pixel_data", "compressed Pixel Data is not encapsulated", sop_instance_uid)
        return
    pixels = rows * columns * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * bits // 8
    if present < expected:
        raise RejectedInstance(
            "short_pixel_data",
            f"Pixel Data holds {present} bytes; Rows×Columns×SamplesPerPixel×frames×BitsAllocated/8 "
            f"= {rows}×{columns}×{samples}×{frames}×{bits}/8 needs {expected}",
            sop_instance_uid,
        )


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return max(frames, 1)


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        # a dataset built in memory: pydicom records how it was read
        tsyntax = pydicom.uid.ImplicitVRLittleEndian if getattr(ds, "is_implicit_VR", False) else (
            pydicom.uid.ExplicitVRLittleEndian)
    return UID(tsyntax)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """An attribute as text, or None when absent or unreadable (parse must not fail on reading it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:  # a malformed value must not hide the real reason for rejection
        return None
    return str(value) if value not in (None, "") else None
