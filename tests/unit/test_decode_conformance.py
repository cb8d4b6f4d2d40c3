"""decode_pixels reproduces pydicom's pixels on every file of pydicom's test corpus (pydicom-data).

The corpus was written by others, across every transfer syntax pydicom handles. Files pydicom
decodes must come out identical (lossless syntaxes) or within the codec's rounding tolerance (lossy
syntaxes); files pydicom cannot decode must be refused with UnsupportedTransferSyntax naming the
syntax. No corpus file is above 50 MB (the largest is about 7 MB), so none is skipped.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import UID

from ingest.decode import DECODERS, decode_pixels, decode_pixels_and_decoder
from oncostream.errors import RejectedInstance, UnsupportedTransferSyntax

MAX_FILE_BYTES = 50 * 1024 * 1024

# ISO/IEC 10918-2 lets a conforming JPEG decoder's IDCT differ by one unit; JPEG 2000's irreversible
# 9/7 wavelet is floating point, so implementations may round differently by one unit as well.
# Lossless syntaxes get no tolerance.
LOSSY_TOLERANCE = 1
LOSSY_SYNTAXES = {
    pydicom.uid.JPEGBaseline8Bit,
    pydicom.uid.JPEGExtended12Bit,
    pydicom.uid.JPEGLSNearLossless,
    pydicom.uid.JPEG2000,
    pydicom.uid.HTJ2K,
}


def _corpus() -> list[Path]:
    """Corpus files holding Pixel Data (pydicom-data ships them in the package: no download)."""
    found = []
    for name in sorted(get_testdata_files(), key=lambda p: Path(p).name):
        path = Path(name)
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=False, defer_size=1024)
        except Exception:  # non-DICOM files of the corpus (JSON, dumps, archives)
            continue
        if "PixelData" in ds:
            found.append(path)
    return found


CORPUS = _corpus()


@cache
def _reference(path: Path) -> np.ndarray | None:
    """pydicom's own pixel_array, or None when pydicom cannot decode the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path).pixel_array
        except Exception:
            return None


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def test_corpus_is_the_installed_pydicom_data():
    # pydicom's bundled files plus the pydicom-data package's; a missing package would shrink this silently
    assert len(CORPUS) >= 150
    assert any("data_store" in str(path) for path in CORPUS)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_decodes_like_pydicom(path):
    reference = _reference(path)
    ds = _read(path)
    tsyntax = UID(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if reference is None and path.name in DECODED_BY_DCMTK:
        return  # no pydicom reference to compare with: test_12_bit_lossy_jpeg_is_decoded_by_dcmtk
    if path.name in REFUSED_BEFORE_DECODING:
        with pytest.raises(RejectedInstance) as refused:
            decode_pixels(ds)
        assert refused.value.reason == REFUSED_BEFORE_DECODING[path.name]
        return
    if reference is None:
        with pytest.raises(UnsupportedTransferSyntax) as caught:
            decode_pixels(ds)
        assert caught.value.transfer_syntax_uid == str(tsyntax)
        assert caught.value.reason == "undecodable"
        assert (tsyntax.name if tsyntax else "(absent)") in caught.value.detail
        assert caught.value.failures, "the error must say why each decoder failed"
        return
    pixels, decoder = decode_pixels_and_decoder(ds)
    assert pixels.shape == reference.shape
    assert pixels.dtype == reference.dtype
    if tsyntax in LOSSY_SYNTAXES:
        difference = np.abs(pixels.astype(np.int64) - reference.astype(np.int64)).max(initial=0)
        assert difference <= LOSSY_TOLERANCE, f"{decoder} differs by {difference} on lossy {tsyntax.name}"
    else:
        assert np.array_equal(pixels, reference), f"{decoder} differs on lossless {tsyntax.name}"


# which files pydicom cannot decode with the plugins pinned in pyproject.toml; listed so that a
# plugin change that alters the set is noticed here rather than silently moving files between tests
PYDICOM_UNDECODABLE = {
    "JPEG-lossy.dcm": "JPEG Extended (Process 2 and 4)",  # 12-bit lossy JPEG: no NumPy-1 plugin decodes it
    "JPGExtended.dcm": "JPEG Extended (Process 2 and 4)",
    "JPEG2000-embedded-sequence-delimiter.dcm": "JPEG 2000 Image Compression",
    "MR_truncated.dcm": "Explicit VR Little Endian",  # pixel data shorter than the geometry
    "badVR.dcm": "Explicit VR Little Endian",
    "meta_missing_tsyntax.dcm": "(absent)",
    "nested_priv_SQ.dcm": "Implicit VR Little Endian",  # no Bits Allocated
}


def test_undecodable_set_is_as_expected():
    undecodable = {path.name for path in CORPUS if _reference(path) is None}
    assert undecodable == set(PYDICOM_UNDECODABLE)


# of those, a frame whose header declares another geometry than the data set is refused before any
# decoder allocates: this one's SIZ says 1024×3722445056 (Pillow's bomb check saw 3.8e12 pixels)
REFUSED_BEFORE_DECODING = {"JPEG2000-embedded-sequence-delimiter.dcm": "invalid_geometry"}

# of those, the 12-bit lossy JPEGs are decoded by DCMTK's dcmdjpeg (ingest/decode.py DcmtkJpegDecoder)
DECODED_BY_DCMTK = {"JPEG-lossy.dcm", "JPGExtended.dcm"}


@pytest.mark.parametrize("name", sorted(DECODED_BY_DCMTK))
def test_12_bit_lossy_jpeg_is_decoded_by_dcmtk(name):
    (path,) = [p for p in CORPUS if p.name == name]
    ds = _read(path)
    pixels, decoder = decode_pixels_and_decoder(ds)
    assert decoder == "dcmtk"
    assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16
    assert 0 < pixels.max() < 2 ** ds.BitsStored and pixels.std() > 0


@pytest.mark.parametrize("name", sorted(set(PYDICOM_UNDECODABLE) - DECODED_BY_DCMTK - set(REFUSED_BEFORE_DECODING)))
def test_undecodable_is_refused_naming_the_syntax(name):
    (path,) = [p for p in CORPUS if p.name == name]
    with pytest.raises(UnsupportedTransferSyntax) as caught:
        decode_pixels(_read(path))
    assert PYDICOM_UNDECODABLE[name] in str(caught.value)


def test_dali_decodes_unsigned_16_bit_jpeg2000():
    """DALI is chosen where it is exact; if it stopped being used, the corpus would no longer prove it."""
    (dali,) = [d for d in DECODERS if d.name == "dali"]
    assert dali.is_available(), dali.unavailable_reason()
    path = next(p for p in CORPUS if p.name == "MR2_J2KR.dcm")
    pixels, decoder = decode_pixels_and_decoder(_read(path))
    assert decoder == "dali"
    assert np.array_equal(pixels, _reference(path))


def test_every_decoder_says_why_when_unavailable():
    for decoder in DECODERS:
        assert decoder.is_available() or decoder.unavailable_reason()


# --- round trips on instances shaped like the pipeline's own inputs --------------------------
# The corpus has no 12/14-bit mammograms and no multi-frame unsigned JPEG 2000; encode such
# instances with pydicom's encoders and check decode_pixels against the original values.


def _instance(bits: int, frames: int, signed: bool) -> tuple[pydicom.Dataset, np.ndarray]:
    """A real CT instance re-filled with smooth anatomy-like values plus noise, deterministic."""
    ds = _read(Path(pydicom.data.get_testdata_file("CT_small.dcm")))
    rng = np.random.default_rng(bits * 10 + frames)
    yy, xx = np.mgrid[0:96, 0:80]
    base = (np.sin(yy / 9) + np.cos(xx / 7) + 2) / 4
    high = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    low = -(2 ** (bits - 1)) if signed else 0
    volume = np.stack([base * high * 0.8 + rng.integers(0, 200, base.shape) for _ in range(frames)])
    volume = volume.clip(low, high).astype(np.int16 if signed else np.uint16)
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = volume.tobytes()
    return ds, volume if frames > 1 else volume[0]


ROUND_TRIPS = [
    # (id, bits, frames, signed, syntax, encoder options, allowed error vs the original)
    ("MG14/RLE", 14, 1, False, pydicom.uid.RLELossless, {}, 0),
    ("MG14/JPEG-LS", 14, 1, False, pydicom.uid.JPEGLSLossless, {}, 0),
    ("MG14/JPEG-LS-near3", 14, 1, False, pydicom.uid.JPEGLSNearLossless, {"jls_error": 3}, 3),
    ("MG12/J2K-lossless", 12, 1, False, pydicom.uid.JPEG2000Lossless, {}, 0),
    ("MG14/J2K-lossless", 14, 1, False, pydicom.uid.JPEG2000Lossless, {}, 0),
    ("MG16x10/J2K-lossless", 16, 10, False, pydicom.uid.JPEG2000Lossless, {}, 0),
    ("CT16-signed/J2K-lossless", 16, 1, True, pydicom.uid.JPEG2000Lossless, {}, 0),
    ("CT16-signedx3/RLE", 16, 3, True, pydicom.uid.RLELossless, {}, 0),
    ("CT12-signed/JPEG-LS", 12, 1, True, pydicom.uid.JPEGLSLossless, {}, 0),
]


@pytest.mark.parametrize(
    ("bits", "frames", "signed", "syntax", "options", "allowed"),
    [case[1:] for case in ROUND_TRIPS],
    ids=[case[0] for case in ROUND_TRIPS],
)
def test_round_trip(bits, frames, signed, syntax, options, allowed):
    ds, original = _instance(bits, frames, signed)
    ds.compress(syntax, **options)
    pixels, decoder = decode_pixels_and_decoder(ds)
    assert pixels.shape == original.shape and pixels.dtype == original.dtype
    error = np.abs(pixels.astype(np.int64) - original.astype(np.int64)).max()
    assert error <= allowed, f"{decoder}: error {error} > {allowed}"
    if syntax in (pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEG2000):
        assert (decoder == "dali") == (not signed), "DALI is used exactly for unsigned 16-bit JPEG 2000"


# --- instances encoded by DCMTK's dcmcjpeg: JPEG lossless process 14 (any predictor, and SV1) and
# 12-bit lossy JPEG Extended, which pydicom cannot encode. DCMTK's lossy encoder shifts signed data
# to unsigned and moves the rescale intercept, so values are compared in modality units (HU).

DCMTK_ROUND_TRIPS = [
    # (id, dcmcjpeg options, signed, syntax, decoder, allowed max / mean |error| in HU)
    ("CT12/process14-sv3", ["+el", "+sv", "3"], False, pydicom.uid.JPEGLossless, "pydicom/gdcm", (0, 0)),
    ("CT12-signed/process14-sv1", ["+e1"], True, pydicom.uid.JPEGLosslessSV1, "pydicom/gdcm", (0, 0)),
    # lossy at dcmcjpeg's default quality: measured max 15-16 HU, mean 3 HU; a wrong sign, shift or
    # rescale would be off by hundreds
    ("CT12/extended", ["+ee"], False, pydicom.uid.JPEGExtended12Bit, "dcmtk", (40, 6)),
    ("CT12-signed/extended", ["+ee"], True, pydicom.uid.JPEGExtended12Bit, "dcmtk", (40, 6)),
]


@pytest.mark.parametrize(("options", "signed", "syntax", "expected_decoder", "allowed"),
                         [case[1:] for case in DCMTK_ROUND_TRIPS], ids=[case[0] for case in DCMTK_ROUND_TRIPS])
def test_dcmtk_encoded_round_trip(tmp_path, options, signed, syntax, expected_decoder, allowed):
    import subprocess

    ds, original = _instance(12, 1, signed)
    ds.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    subprocess.run(["dcmcjpeg", *options, str(tmp_path / "native.dcm"), str(tmp_path / "jpeg.dcm")], check=True,
                   capture_output=True, timeout=120)
    encoded = _read(tmp_path / "jpeg.dcm")
    assert encoded.file_meta.TransferSyntaxUID == syntax
    pixels, decoder = decode_pixels_and_decoder(encoded)
    assert decoder == expected_decoder
    assert pixels.shape == original.shape
    assert pixels.dtype == (np.int16 if encoded.PixelRepresentation else np.uint16)

    def hu(values: np.ndarray, source: pydicom.Dataset) -> np.ndarray:
        return values.astype(np.float64) * float(source.RescaleSlope) + float(source.RescaleIntercept)

    error = np.abs(hu(pixels, encoded) - hu(original, ds))
    assert error.max() <= allowed[0] and error.mean() <= allowed[1], (error.max(), error.mean())
