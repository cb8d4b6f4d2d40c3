"""Parse and validate one DICOM instance, route it by SOP class, and decode its pixels.

Parsing is strict about what the pipeline relies on (a Part 10 file, the identifying UIDs, an
image pixel module, pixel data long enough for the declared geometry) and rejects anything else
with a RejectedInstance carrying a machine-readable reason. Decoding is lenient: every available
decoder is tried in turn, and only when all fail does one UnsupportedTransferSyntax list why each
failed (the pydicom ``pixels/decoders`` shape).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import shutil
import subprocess
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_fragments, generate_frames
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
    meta = getattr(ds, "file_meta", pydicom.Dataset())
    sop_class = _text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID")
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
    return decode_pixels_and_decoder(ds)[0]


def decode_pixels_and_decoder(ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    """decode_pixels, also naming the decoder that succeeded (for metrics and conformance tests)."""
    tsyntax = _transfer_syntax(ds)
    if tsyntax is None:
        raise UnsupportedTransferSyntax("", "(absent)", {"file meta": "no Transfer Syntax UID (0002,0010)"},
                                        _text(ds, "SOPInstanceUID"))
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
            LOG.debug("decoder %s failed on %s (%s): %s", decoder.name, _text(ds, "SOPInstanceUID"),
                      tsyntax.name, type(exc).__name__)
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
    start = codestream.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(codestream) < start + 43:
        raise ValueError("no JPEG 2000 SIZ marker in the frame")
    siz = start + 4  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, Ssiz...
    components = int.from_bytes(codestream[siz + 36:siz + 38], "big")
    ssiz = codestream[siz + 38]
    return bool(ssiz & 0x80), (ssiz & 0x7F) + 1, components


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
    tsyntax = _transfer_syntax(ds)
    if tsyntax is None:
        raise RejectedInstance("missing_attribute", "file meta has no Transfer Syntax UID (0002,0010)",
                               sop_instance_uid)
    if tsyntax.is_compressed:
        _check_encapsulated(raw, tsyntax, sop_instance_uid)
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
