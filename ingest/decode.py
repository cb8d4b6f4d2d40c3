"""Parse and validate one DICOM instance, route it by SOP class, and decode its pixels.

Parsing is strict about what the pipeline relies on (a Part 10 file, the identifying UIDs and
their grammar, an image pixel module within the configured bounds, CT patient geometry, pixel data
long enough for the declared geometry, compressed frames whose headers match it) and rejects
anything else with a RejectedInstance carrying a machine-readable reason. The bytes are untrusted:
a Deflated data set is inflated against the byte cap before pydicom inflates it, and what a
compressed frame will decode to is bounded by the declared geometry before any decoder allocates.
Decoding is lenient: every available decoder is tried in turn, and only when all fail does one
UnsupportedTransferSyntax list why each failed (the pydicom ``pixels/decoders`` shape).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import warnings
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.rle import _rle_parse_header
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

from oncostream.errors import NotScreened, ProcessFault, RejectedInstance, UnsupportedTransferSyntax
from oncostream.ids import loggable_uid

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

# UI attributes that assembly keys on and that are copied into events, SRs and file names
_IDENTIFYING_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_OPTIONAL_UIDS = ("FrameOfReferenceUID",)

_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
# ImageOrientationPatient is written as DS (at most 16 characters a value): unit length and
# orthogonality hold to about 1e-6 in conformant data; 1e-2 (0.6 degrees) tolerates rounded writers
# while refusing cosines that would skew the slice normal
_ORIENTATION_TOLERANCE = 1e-2
# more slices than any acquisition has; ImagesInAcquisition decides when a series is complete
_MAX_IMAGES_IN_ACQUISITION = 100_000
# inflate a Deflated data set in steps of this many bytes, so that checking the cap costs no more
_INFLATE_STEP = 4 * 1024 * 1024


@dataclass(frozen=True)
class InstanceLimits:
    """What one instance may declare (settings ``max_image_dimension``, ``max_frames``,
    ``max_decoded_bytes``, ``max_elements``): Rows and Columns, NumberOfFrames, the bytes its pixels
    decode to, and how many data elements it holds."""

    max_image_dimension: int
    max_frames: int
    max_decoded_bytes: int
    max_elements: int

    def __post_init__(self) -> None:
        for name in ("max_image_dimension", "max_frames", "max_decoded_bytes", "max_elements"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    @classmethod
    def from_settings(cls, settings) -> InstanceLimits:
        return cls(settings.max_image_dimension, settings.max_frames, settings.max_decoded_bytes,
                   settings.max_elements)


@functools.cache
def _configured_limits() -> InstanceLimits:
    """The limits of the process's settings (environment), for callers that pass none."""
    from oncostream.settings import Settings

    return InstanceLimits.from_settings(Settings())


def parse_instance(data: bytes, *, max_bytes: int, limits: InstanceLimits | None = None) -> pydicom.Dataset:
    """Parse Part 10 bytes into a Dataset that assembly and decoding can rely on.

    Raises RejectedInstance with reason ``oversize``, ``not_dicom``, ``truncated``, ``malformed``,
    ``too_many_elements``, ``unknown_sop_class``, ``missing_attribute``, ``invalid_uid``,
    ``invalid_geometry``, ``geometry_above_limit``, ``missing_pixel_data``, ``short_pixel_data``, or
    a mammography refusal of ingest/canonical/mammo.py.
    Never raises anything else, whatever the bytes, except ProcessFault when this process, not the
    instance, is at fault (retried, never dead-lettered); ``limits`` default to the settings' values.
    """
    limits = limits or _configured_limits()
    if len(data) > max_bytes:
        raise RejectedInstance("oversize", f"instance is {len(data)} bytes, above the limit of {max_bytes} bytes")
    deflated_at = _check_inflated_size(data, max_bytes)
    if deflated_at is not None:
        _count_deflated_elements(data, deflated_at, limits)
    ds = _read(data, limits)
    sop_instance_uid = _text(ds, "SOPInstanceUID")
    if sop_instance_uid is not None and not UID(sop_instance_uid).is_valid:
        sop_instance_uid = None  # never carry a malformed identifier into dead letters and logs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd value of untrusted input
            _check_truncation(ds, len(data), sop_instance_uid)
            modality = route(ds)
            _check_required(ds, sop_instance_uid)
            _check_uids(ds, sop_instance_uid)
            _check_image_module(ds, limits, sop_instance_uid)
            if modality == "CT":
                _check_ct_geometry(ds, sop_instance_uid)
            else:
                _check_mammo_readable(ds)
            _check_pixel_data(ds, sop_instance_uid)
    except RejectedInstance:
        raise
    except Exception as exc:  # malformed values surface lazily, on first access
        fault = ProcessFault.of(exc)
        if fault is not None:
            raise fault from exc
        raise RejectedInstance(
            "malformed", f"cannot read attribute values: {type(exc).__name__}: {exc}", sop_instance_uid
        ) from exc
    return ds


def _check_mammo_readable(ds: pydicom.Dataset) -> None:
    """Mammography images the screening models cannot read (For Processing, spot compression,
    magnification, synthesised 2D, rotated...) are refused here, one instance at a time, so the rest
    of the exam is still read (ingest/canonical/mammo.py says why each is refused)."""
    from ingest.canonical.mammo import refusal

    problem = refusal(ds)
    if problem is not None:
        raise problem


# PS3.4 B.5: objects that arrive with screening studies and that no pipeline reads (NotScreened)
NOT_SCREENED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.73",  # Patient Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.50",  # Mammography CAD SR
    "1.2.840.10008.5.1.4.1.1.88.65",  # Chest CAD SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
}


def route(ds: pydicom.Dataset) -> str:
    """The pipeline ("MG" or "CT") for this instance's SOP Class UID; NotScreened for an object that
    comes with screening studies but no pipeline reads, RejectedInstance for anything else."""
    meta = getattr(ds, "file_meta", pydicom.Dataset())
    sop_class = _text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID")
    pipeline = SOP_CLASS_ROUTES.get(sop_class or "")
    if pipeline is None and sop_class in NOT_SCREENED_SOP_CLASSES:
        raise NotScreened(f"SOP class {sop_class} ({UID(sop_class).name}) is not read by the screening pipelines",
                          _text(ds, "SOPInstanceUID"))
    if pipeline is None:
        name = UID(sop_class).name if sop_class else "none"
        raise RejectedInstance(
            "unknown_sop_class", f"SOP class {sop_class or '(absent)'} ({name}) is not routed to any pipeline",
            _text(ds, "SOPInstanceUID"),
        )
    return pipeline


def decode_pixels(ds: pydicom.Dataset, limits: InstanceLimits | None = None) -> np.ndarray:
    """Stored pixel values, the same shape and dtype as pydicom's ``ds.pixel_array``.

    Tries each available decoder that supports the transfer syntax, first success wins; raises
    UnsupportedTransferSyntax naming the syntax and each decoder's failure, and RejectedInstance
    (``geometry_above_limit``, ``invalid_geometry``) before any decoder runs when the declared
    geometry is above ``limits`` or a compressed frame's header does not match it.
    """
    return decode_pixels_and_decoder(ds, limits)[0]


def decode_pixels_and_decoder(ds: pydicom.Dataset, limits: InstanceLimits | None = None) -> tuple[np.ndarray, str]:
    """decode_pixels, also naming the decoder that succeeded (for metrics and conformance tests)."""
    tsyntax = _transfer_syntax(ds)
    if tsyntax is None:
        raise UnsupportedTransferSyntax("", "(absent)", {"file meta": "no Transfer Syntax UID (0002,0010)"},
                                        _text(ds, "SOPInstanceUID"))
    # a data set may reach here without parse_instance (tests, tools): bound the decoders here too
    _bound_decoding(ds, tsyntax, limits or _configured_limits())
    failures: dict[str, str] = {}
    for decoder in DECODERS:
        if not decoder.supports(ds, tsyntax):
            continue
        if not decoder.is_available():
            failures[decoder.name] = f"unavailable: {decoder.unavailable_reason()}"
            continue
        try:
            return decoder.decode(ds), decoder.name
        except Exception as exc:  # each decoder fails in its own way; all are reported together
            failures[decoder.name] = f"{type(exc).__name__}: {exc}"
            LOG.debug("decoder %s failed on %s (%s): %s", decoder.name,
                      loggable_uid(_text(ds, "SOPInstanceUID")), tsyntax.name, type(exc).__name__)
    if missing := _missing_plugins(tsyntax):
        failures["not installed"] = missing
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
    """pydicom's decoder for a transfer syntax, pinned to one plugin (``pydicom`` is the built-in
    one: native syntaxes, deflated, RLE), so that each plugin's failure is reported on its own."""

    def __init__(self, plugin: str):
        self.plugin = plugin
        self.name = f"pydicom/{plugin}"

    def supports(self, ds: pydicom.Dataset, tsyntax: UID) -> bool:
        if not tsyntax.is_compressed:
            return self.plugin == "pydicom"
        try:
            return self.plugin in get_decoder(tsyntax).available_plugins
        except NotImplementedError:  # a syntax pydicom has no decoder for
            return False

    def is_available(self) -> bool:
        return True  # registered only for plugins pydicom found importable

    def unavailable_reason(self) -> str:
        return ""

    def decode(self, ds: pydicom.Dataset) -> np.ndarray:
        tsyntax = _transfer_syntax(ds)
        if tsyntax is not None and tsyntax.is_compressed:
            return pydicom.pixels.pixel_array(ds, decoding_plugin=self.plugin)
        return pydicom.pixels.pixel_array(ds)


class DaliJpeg2000Decoder(PixelDecoder):
    """DALI's CPU ``decoders.image`` for unsigned 16-bit single-sample JPEG 2000 frames.

    Only for those: on pydicom's test corpus they decode pixel-identically to pydicom, while
    signed codestreams fail in DALI and 8-bit or colour frames come back rescaled or converted.
    The same pipeline definition runs on a GPU with ``device="mixed"``.
    """

    name = "dali"
    _SYNTAXES = (pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEG2000)
    _BATCH = 8

    def __init__(self) -> None:
        self._pipeline = None
        self._lock = threading.Lock()
        # probed without importing: importing DALI costs about a second, paid on first decode only
        self._reason = None if _importable("nvidia.dali") else "missing nvidia-dali (module nvidia.dali)"

    def supports(self, ds: pydicom.Dataset, tsyntax: UID) -> bool:
        return (
            tsyntax in self._SYNTAXES
            and ds.get("BitsAllocated") == 16
            and ds.get("PixelRepresentation") == 0
            and int(ds.get("SamplesPerPixel", 1) or 1) == 1
        )

    def is_available(self) -> bool:
        return self._reason is None

    def unavailable_reason(self) -> str:
        return self._reason or ""

    def decode(self, ds: pydicom.Dataset) -> np.ndarray:
        frames_count = _number_of_frames(ds)
        frames = list(generate_frames(ds.PixelData, number_of_frames=frames_count))
        for index, frame in enumerate(frames):
            signed, precision, components = _j2k_siz(frame)
            if signed or components != 1 or precision > 16:
                raise ValueError(f"frame {index}: codestream is signed={signed}, precision={precision}, "
                                 f"components={components}; DALI is exact only for unsigned 1-component ≤16 bit")
        decoded: list[np.ndarray] = []
        with self._lock:
            for start in range(0, len(frames), self._BATCH):
                decoded.extend(self._run(frames[start:start + self._BATCH]))
        shape = (int(ds.Rows), int(ds.Columns))
        for index, frame in enumerate(decoded):
            if frame.shape != shape:
                raise ValueError(f"frame {index} decoded to {frame.shape}, expected Rows×Columns {shape}")
        return decoded[0] if frames_count == 1 else np.stack(decoded)

    def _run(self, frames: list[bytes]) -> list[np.ndarray]:
        """One pipeline run; a failed run leaves DALI's pipeline unusable, so it is rebuilt next time."""
        if self._pipeline is None:
            self._pipeline = _build_dali_pipeline(self._BATCH)
        try:
            self._pipeline.feed_input("encoded", [np.frombuffer(frame, np.uint8) for frame in frames])
            (output,) = self._pipeline.run()
        except Exception:
            self._pipeline = None
            raise
        return [np.array(output[i])[..., 0].astype(np.uint16, copy=False) for i in range(len(frames))]


class DcmtkJpegDecoder(PixelDecoder):
    """DCMTK's ``dcmdjpeg`` (IJG, 8/12/16-bit) for JPEG Extended with more than 8 bits stored.

    No pydicom plugin that works with NumPy 1 (pinned for Triton's python backend, DESIGN.md)
    decodes 12-bit lossy JPEG, which older CT and archive exports still send. One subprocess per
    instance, so it is used for that syntax only, after every pydicom plugin has declined.
    """

    name = "dcmtk"
    _TIMEOUT_S = 120

    def supports(self, ds: pydicom.Dataset, tsyntax: UID) -> bool:
        return tsyntax == pydicom.uid.JPEGExtended12Bit and int(ds.get("BitsStored", 8) or 8) > 8

    def is_available(self) -> bool:
        return shutil.which("dcmdjpeg") is not None

    def unavailable_reason(self) -> str:
        return "" if self.is_available() else "missing dcmdjpeg (Debian package dcmtk)"

    def decode(self, ds: pydicom.Dataset) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="oncostream-dcmdjpeg-") as folder:
            source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
            ds.save_as(source, enforce_file_format=True)
            result = subprocess.run(["dcmdjpeg", str(source), str(target)], capture_output=True, text=True,
                                    timeout=self._TIMEOUT_S)
            if result.returncode != 0 or not target.exists():
                reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeError(f"dcmdjpeg exited {result.returncode}: {reason}")
            pixels = pydicom.dcmread(target).pixel_array
        shape = (int(ds.Rows), int(ds.Columns))
        if pixels.shape[-2:] != shape:
            raise ValueError(f"dcmdjpeg decoded {pixels.shape}, expected Rows×Columns {shape}")
        return pixels


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package is missing
        return False


def _build_dali_pipeline(batch_size: int):
    """CPU pipeline (``device_id=None``): encoded bytes in, uint16 H×W×1 out, no pipelining so
    each run returns the frames just fed."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None,
                  exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
    def jpeg2000_frames():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(encoded, device="cpu", output_type=types.ANY_DATA, dtype=types.UINT16)

    pipeline = jpeg2000_frames()
    pipeline.build()
    return pipeline


def _j2k_siz(codestream: bytes) -> tuple[bool, int, int]:
    """(signed, precision, components) of the first component, from the SIZ marker (ISO 15444-1 A.5.1).

    Frames may be JP2-wrapped; the codestream starts at the SOC marker FF4F followed by SIZ FF51.
    """
    signed, precision, components, _rows, _columns = _j2k_header(codestream)
    return signed, precision, components


def _j2k_header(codestream: bytes) -> tuple[bool, int, int, int, int]:
    """(signed, precision, components, rows, columns) from the SIZ marker (ISO 15444-1 A.5.1):
    the image area is Xsiz - XOsiz columns by Ysiz - YOsiz rows."""
    start = codestream.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(codestream) < start + 43:
        raise ValueError("no JPEG 2000 SIZ marker in the frame")
    siz = start + 4  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, Ssiz...
    xsiz, ysiz, xosiz, yosiz = (int.from_bytes(codestream[siz + i:siz + i + 4], "big") for i in (4, 8, 12, 16))
    components = int.from_bytes(codestream[siz + 36:siz + 38], "big")
    ssiz = codestream[siz + 38]
    return bool(ssiz & 0x80), (ssiz & 0x7F) + 1, components, ysiz - yosiz, xsiz - xosiz


def _pydicom_plugins() -> list[str]:
    """The built-in decoder first, then every importable plugin of any syntax, alphabetically."""
    from pydicom.pixels.decoders import base as decoders

    plugins = {
        plugin
        for value in vars(decoders).values()
        if isinstance(value, decoders.Decoder)
        for plugin in value.available_plugins
    }
    return ["pydicom", *sorted(plugins - {"pydicom"})]


def _missing_plugins(tsyntax: UID) -> str | None:
    """pydicom's own words on which plugins for this syntax are not installed, if any."""
    try:
        missing = get_decoder(tsyntax).missing_dependencies
    except NotImplementedError:
        return "pydicom has no decoder for this transfer syntax"
    return "; ".join(missing) or None


# first success wins: DALI where it is exact, then pydicom's built-in decoder and plugins
DECODERS: list[PixelDecoder] = [DaliJpeg2000Decoder(), *(PydicomPluginDecoder(name) for name in _pydicom_plugins()),
                                 DcmtkJpegDecoder()]


def _check_inflated_size(data: bytes, max_bytes: int) -> int | None:
    """A Deflated data set (PS3.5 A.5) must inflate to at most ``max_bytes`` with its file meta;
    returns where the deflated data set starts, None when the file is not Deflated.

    pydicom inflates the whole stream in one call, so a 50 kB deflate bomb would become hundreds
    of megabytes before any check; here it is inflated step by step, keeping nothing, and refused
    as soon as it passes the cap. Anything that is not a readable Deflated Part 10 file is left to
    dcmread to diagnose.
    """
    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_preamble(stream, False)
            meta = _read_file_meta_info(stream)
            tsyntax = meta.get("TransferSyntaxUID")
    except Exception:  # noqa: BLE001 - dcmread gives the reason for files whose meta cannot be read
        return None
    if tsyntax != DeflatedExplicitVRLittleEndian:
        return None
    budget = max_bytes - stream.tell()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = memoryview(data)[stream.tell():]
    inflated = 0
    try:
        while True:
            chunk = inflater.decompress(pending, _INFLATE_STEP)
            inflated += len(chunk)
            if inflated > budget:
                raise RejectedInstance(
                    "oversize", f"Deflated data set of {len(data)} bytes inflates past the limit of {max_bytes} "
                                "bytes (stopped there)")
            pending = inflater.unconsumed_tail
            if inflater.eof or (not chunk and not pending):
                break
    except zlib.error as exc:
        raise RejectedInstance("malformed", f"Deflated data set does not inflate: {exc}") from exc
    return stream.tell()


class _CountingReader(io.BytesIO):
    """Bytes for pydicom that refuse to be read more than ``max_reads`` times.

    pydicom keeps about 300 bytes per data element, so 7.7 MB of empty elements parsed to 430 MB; it
    reads each element's header and value with separate calls, items of nested sequences included,
    so counting reads bounds the elements (and the memory) whatever their nesting, with no reader of
    our own.
    """

    # reads per element: the tag and VR, a 4-byte length for long VRs, the value
    READS_PER_ELEMENT = 3

    def __init__(self, data: bytes, max_elements: int):
        super().__init__(data)
        self._max_elements = max_elements
        self._reads_left = self.READS_PER_ELEMENT * max_elements + 64  # the preamble and file meta

    def read(self, size: int | None = -1) -> bytes:
        self._reads_left -= 1
        if self._reads_left < 0:
            raise RejectedInstance("too_many_elements", f"data set holds more than about {self._max_elements} "
                                   "data elements (settings max_elements)")
        return super().read(size)


def _count_deflated_elements(data: bytes, start: int, limits: InstanceLimits) -> None:
    """The element bound for a Deflated data set, which pydicom inflates into a reader of its own:
    its inflated bytes (already known to fit ``max_bytes``) are read once through _CountingReader."""
    from pydicom.filereader import read_dataset

    try:
        inflated = zlib.decompress(memoryview(data)[start:], -zlib.MAX_WBITS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_dataset(_CountingReader(inflated, limits.max_elements), False, True)
    except RejectedInstance:
        raise
    except Exception:  # noqa: BLE001 - dcmread gives the reason for anything else
        return


def _read(data: bytes, limits: InstanceLimits) -> pydicom.Dataset:
    """dcmread, with pydicom's every failure mapped to not_dicom or truncated, and the element bound."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(_CountingReader(data, limits.max_elements))
    except RejectedInstance:
        raise
    except InvalidDicomError as exc:
        raise RejectedInstance("not_dicom", f"not a DICOM Part 10 file: {exc}") from exc
    except (ImportError, MemoryError, RuntimeError) as exc:
        raise (ProcessFault.of(exc) or RejectedInstance("not_dicom", f"cannot parse as DICOM: {type(exc).__name__}: {exc}")) from exc
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


def _check_uids(ds: pydicom.Dataset, sop_instance_uid: str | None) -> None:
    """Identifying UIDs follow the UID grammar (PS3.5 9.1): they become Kafka keys, file names and
    references in SRs, so ``../../etc`` or a 302-character value must not pass. The value itself is
    never echoed: it is untrusted and may carry anything."""
    for keyword in (*_IDENTIFYING_UIDS, *_OPTIONAL_UIDS):
        value = ds.get(keyword)
        if value in (None, "") and keyword in _OPTIONAL_UIDS:
            continue
        problem = _uid_problem(value)
        if problem:
            raise RejectedInstance("invalid_uid", f"{keyword} is not a valid UID (PS3.5 9.1): {problem}",
                                   sop_instance_uid)


def _uid_problem(value) -> str | None:
    """Why a UI value breaks the UID grammar, or None when it is a valid UID."""
    if isinstance(value, (MultiValue, list, tuple)):
        return f"{len(value)} values where one is required"
    text = str(value)
    if UID(text).is_valid:
        return None
    if len(text) > 64:
        return f"{len(text)} characters, more than 64"
    if not text or any(c not in "0123456789." for c in text):
        return "characters other than digits and dots"
    if any(part == "" for part in text.split(".")):
        return "an empty component"
    return "a component with a leading zero"


def _check_image_module(ds: pydicom.Dataset, limits: InstanceLimits, sop_instance_uid: str | None) -> None:
    """Image pixel attributes are sane integers within ``limits``, and what the pixels decode to
    (Rows × Columns × frames × samples × bytes per sample) is under ``limits.max_decoded_bytes``,
    so that no decoder is asked to allocate more whatever a compressed frame claims."""
    rows, columns = _integer(ds, "Rows", sop_instance_uid), _integer(ds, "Columns", sop_instance_uid)
    bits_allocated = _integer(ds, "BitsAllocated", sop_instance_uid)
    bits_stored = _integer(ds, "BitsStored", sop_instance_uid)
    representation = _integer(ds, "PixelRepresentation", sop_instance_uid)
    samples = _integer(ds, "SamplesPerPixel", sop_instance_uid, default=1)
    # 0 is not a valid NumberOfFrames, but some writers put it on single-frame images and pydicom
    # reads it as one frame
    frames = _integer(ds, "NumberOfFrames", sop_instance_uid, default=1) or 1
    invalid = []
    if rows <= 0 or columns <= 0:
        invalid.append(f"Rows={rows}, Columns={columns}")
    if bits_allocated not in (1, 8, 16, 32, 64):
        invalid.append(f"BitsAllocated={bits_allocated}")
    if not 0 < bits_stored <= bits_allocated:
        invalid.append(f"BitsStored={bits_stored} with BitsAllocated={bits_allocated}")
    if representation not in (0, 1):
        invalid.append(f"PixelRepresentation={representation}")
    if samples not in (1, 3):
        invalid.append(f"SamplesPerPixel={samples}")
    if frames <= 0:
        invalid.append(f"NumberOfFrames={frames}")
    if invalid:
        raise RejectedInstance("invalid_geometry", "invalid image pixel module: " + ", ".join(invalid),
                               sop_instance_uid)
    _check_declared_size(rows, columns, frames, samples, bits_allocated, limits, sop_instance_uid)


def _check_declared_size(rows: int, columns: int, frames: int, samples: int, bits_allocated: int,
                         limits: InstanceLimits, sop_instance_uid: str | None) -> None:
    above = []
    if rows > limits.max_image_dimension or columns > limits.max_image_dimension:
        above.append(f"Rows×Columns {rows}×{columns} above {limits.max_image_dimension}")
    if frames > limits.max_frames:
        above.append(f"NumberOfFrames {frames} above {limits.max_frames}")
    decoded = rows * columns * frames * samples * math.ceil(bits_allocated / 8)
    if decoded > limits.max_decoded_bytes:
        above.append(f"pixels decode to {rows}×{columns}×{frames} frames×{samples} samples×"
                     f"{math.ceil(bits_allocated / 8)} bytes = {decoded} bytes, above {limits.max_decoded_bytes}")
    if above:
        raise RejectedInstance("geometry_above_limit", "declared image geometry is above the limits: "
                               + "; ".join(above), sop_instance_uid)


def _check_ct_geometry(ds: pydicom.Dataset, sop_instance_uid: str | None) -> None:
    """What slice sorting and the voxel-to-patient mapping rely on (PS3.3 C.7.6.2): two orthogonal
    unit direction cosines, a finite position, positive pixel spacing, a positive slice count."""
    orientation = _numbers(ds, "ImageOrientationPatient", 6, sop_instance_uid)
    _numbers(ds, "ImagePositionPatient", 3, sop_instance_uid)
    spacing = _numbers(ds, "PixelSpacing", 2, sop_instance_uid)
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    norms = (float(np.linalg.norm(row)), float(np.linalg.norm(column)))
    if any(abs(n - 1) > _ORIENTATION_TOLERANCE for n in norms):
        raise RejectedInstance("invalid_geometry", f"ImageOrientationPatient cosines have lengths "
                               f"{norms[0]:.4g} and {norms[1]:.4g}, not 1", sop_instance_uid)
    if abs(float(np.dot(row, column))) > _ORIENTATION_TOLERANCE:
        raise RejectedInstance("invalid_geometry", f"ImageOrientationPatient row and column cosines are not "
                               f"orthogonal (dot product {float(np.dot(row, column)):.4g})", sop_instance_uid)
    if any(value <= 0 for value in spacing):
        raise RejectedInstance("invalid_geometry", f"PixelSpacing {spacing[0]:.4g}\\{spacing[1]:.4g} is not "
                               "positive", sop_instance_uid)
    if ds.get("ImagesInAcquisition") not in (None, ""):
        images = _integer(ds, "ImagesInAcquisition", sop_instance_uid)
        if not 0 < images <= _MAX_IMAGES_IN_ACQUISITION:
            raise RejectedInstance("invalid_geometry", f"ImagesInAcquisition {images} is not a slice count "
                                   f"(1..{_MAX_IMAGES_IN_ACQUISITION})", sop_instance_uid)


def _integer(ds: pydicom.Dataset, keyword: str, sop_instance_uid: str | None, default: int | None = None) -> int:
    """One integer value (US or IS); absent gives ``default``, anything else is invalid_geometry."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom converts IS lazily and raises on garbage
        value = "(unreadable)"
    if value in (None, "") and default is not None:
        return default
    if value in (None, ""):
        raise RejectedInstance("missing_attribute", f"missing required attribute {keyword}", sop_instance_uid)
    try:
        if isinstance(value, (MultiValue, list, tuple, bytes)):
            raise ValueError
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise RejectedInstance("invalid_geometry", f"{keyword} is not an integer", sop_instance_uid) from None


def _numbers(ds: pydicom.Dataset, keyword: str, count: int, sop_instance_uid: str | None) -> list[float]:
    """Exactly ``count`` finite numbers (DS, VM ``count``); absent is missing_attribute."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom converts DS lazily and raises on garbage
        value = "(unreadable)"
    if value in (None, ""):
        raise RejectedInstance("missing_attribute", f"missing required attribute {keyword}", sop_instance_uid)
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RejectedInstance("invalid_geometry", f"{keyword} holds values that are not numbers",
                               sop_instance_uid) from None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise RejectedInstance("invalid_geometry", f"{keyword} must be {count} finite numbers, got "
                               f"{len(numbers)} value(s)" + ("" if all(math.isfinite(n) for n in numbers)
                                                            else " with a non-finite one"), sop_instance_uid)
    return numbers


def _bound_decoding(ds: pydicom.Dataset, tsyntax: UID, limits: InstanceLimits) -> None:
    """Before a decoder runs: the declared geometry is within ``limits`` and, for compressed
    syntaxes, every frame's own header matches it (a decoder allocates what the header says)."""
    sop_instance_uid = _text(ds, "SOPInstanceUID")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _check_image_module(ds, limits, sop_instance_uid)
        except RejectedInstance as exc:
            if exc.reason == "geometry_above_limit":
                raise
            return  # unreadable geometry: every decoder fails on it and says so (lenient decoding)
        if tsyntax.is_compressed and _PIXEL_DATA_TAG in ds:
            _check_codestreams(ds, tsyntax, sop_instance_uid)


def _check_codestreams(ds: pydicom.Dataset, tsyntax: UID, sop_instance_uid: str | None) -> None:
    """Each JPEG, JPEG-LS or JPEG 2000 frame's header (SOF / SIZ) declares the data set's Rows,
    Columns and samples: a 20 kB frame whose header says 60000×60000 would otherwise make the
    decoder allocate gigabytes. Each RLE segment decodes to at most Rows×Columns bytes."""
    if tsyntax in RLETransferSyntaxes:
        _check_rle_frames(ds, sop_instance_uid)
        return
    if tsyntax in JPEG2000TransferSyntaxes:
        header = _j2k_frame_shape
    elif tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        header = _jpeg_frame_shape
    else:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = _number_of_frames(ds)
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
            if index >= frames:
                break
            shape = header(frame)
            if shape is None:
                raise RejectedInstance("invalid_geometry", f"frame {index}: no {tsyntax.name} header (SOF/SIZ) "
                                       "to check against the declared geometry", sop_instance_uid)
            frame_rows, frame_columns, components = shape
            if frame_rows == 0 and tsyntax not in JPEG2000TransferSyntaxes:
                frame_rows = rows  # JPEG may defer the height to a DNL marker (ISO 10918-1 B.2.5)
            if (frame_rows, frame_columns, components) != (rows, columns, samples):
                raise RejectedInstance(
                    "invalid_geometry",
                    f"frame {index}: {tsyntax.name} header declares {frame_rows}×{frame_columns}×{components}, "
                    f"the data set Rows×Columns×SamplesPerPixel {rows}×{columns}×{samples}", sop_instance_uid)
    except RejectedInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - broken item tags or offset tables in untrusted data
        raise RejectedInstance("malformed", f"encapsulated frames cannot be split: {type(exc).__name__}: {exc}",
                               sop_instance_uid) from exc


def _check_rle_frames(ds: pydicom.Dataset, sop_instance_uid: str | None) -> None:
    """pydicom's RLE decoder expands each segment in full before comparing its length with the
    geometry, and every 2 input bytes may expand to 128 (PS3.5 G.3.1): a 7.6 MB frame of repeat
    runs took 600 MB. Counting what each segment decodes to, stopping once it passes Rows×Columns,
    costs one pass over the runs and allocates nothing."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = _number_of_frames(ds)
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
            if index >= frames:
                break
            offsets = _rle_parse_header(frame[:64])
            ends = [*offsets[1:], len(frame)]
            for segment, (start, end) in enumerate(zip(offsets, ends)):
                if not 64 <= start <= end <= len(frame):
                    raise RejectedInstance("malformed", f"frame {index}: RLE segment {segment} offsets "
                                           f"{start}..{end} lie outside the frame", sop_instance_uid)
                # one run of slack: some encoders end a segment with a run that passes the row end
                if _rle_segment_exceeds(frame, start, end, rows * columns + 128):
                    raise RejectedInstance(
                        "invalid_geometry", f"frame {index}: RLE segment {segment} decodes to more than "
                        f"Rows×Columns {rows}×{columns} bytes", sop_instance_uid)
    except RejectedInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - broken item tags, offset tables or RLE headers
        raise RejectedInstance("malformed", f"RLE frames cannot be split: {type(exc).__name__}: {exc}",
                               sop_instance_uid) from exc


def _rle_segment_exceeds(frame: bytes, start: int, end: int, limit: int) -> bool:
    """Whether the PackBits runs in ``frame[start:end]`` decode to more than ``limit`` bytes."""
    position, decoded = start, 0
    while position < end:
        header = frame[position]
        if header < 128:  # a literal run of header + 1 bytes
            decoded += header + 1
            position += header + 2
        elif header > 128:  # one byte repeated 257 - header times
            decoded += 257 - header
            position += 2
        else:  # 128 is a no-op
            position += 1
        if decoded > limit:
            return True
    return False


def _j2k_frame_shape(frame: bytes) -> tuple[int, int, int] | None:
    try:
        _signed, _precision, components, rows, columns = _j2k_header(frame)
    except ValueError:
        return None
    return rows, columns, components


def _jpeg_frame_shape(frame: bytes) -> tuple[int, int, int] | None:
    info = _get_jpg_parameters(frame)
    if "width" not in info:
        return None
    return int(info["height"]), int(info["width"]), int(info["components"])


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
    tsyntax = _transfer_syntax(ds)
    if tsyntax is None:
        raise RejectedInstance("missing_attribute", "file meta has no Transfer Syntax UID (0002,0010)",
                               sop_instance_uid)
    if tsyntax.is_compressed:
        _check_encapsulated(raw, tsyntax, sop_instance_uid)
        _check_codestreams(ds, tsyntax, sop_instance_uid)
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


def _check_encapsulated(raw, tsyntax: UID, sop_instance_uid: str | None) -> None:
    """Compressed Pixel Data must be encapsulated (PS3.5 A.4) and hold at least one non-empty fragment."""
    if raw.length != _UNDEFINED_LENGTH:
        raise RejectedInstance("malformed", f"{tsyntax.name} Pixel Data is not encapsulated", sop_instance_uid)
    try:
        fragments = list(generate_fragments(raw.value))
    except Exception as exc:  # pydicom raises ValueError or struct errors on broken item tags
        raise RejectedInstance("malformed", f"encapsulated Pixel Data items are broken: {exc}",
                               sop_instance_uid) from exc
    # the first item is the Basic Offset Table, the frames follow it
    if not any(fragments[1:]):
        raise RejectedInstance("short_pixel_data", "encapsulated Pixel Data holds no compressed frame fragment",
                               sop_instance_uid)


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return max(frames, 1)


def _transfer_syntax(ds: pydicom.Dataset) -> UID | None:
    """The Transfer Syntax UID from the file meta, None when absent (pydicom cannot decode then)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(tsyntax)) if tsyntax else None


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """An attribute as text, or None when absent or unreadable (parse must not fail on reading it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:  # a malformed value must not hide the real reason for rejection
        return None
    return str(value) if value not in (None, "") else None
