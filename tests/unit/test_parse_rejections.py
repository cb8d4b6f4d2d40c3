"""parse_instance rejects each kind of bad input with its reason, and nothing else escapes it."""

from __future__ import annotations

import io

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.decode import decode_pixels, parse_instance, route
from oncostream.errors import RejectedInstance
from tests.fixtures.corpus import VALID_CT_MAX_BYTES

# what the detail must mention, so an operator reading the dead-letter record knows what to fix
DETAIL_MENTIONS = {
    "truncated": "(7FE0,0010)",
    "not_dicom": "not a DICOM",
    "missing_pixel_data": "Pixel Data",
    "short_pixel_data": "needs 32768",
    "unknown_sop_class": "MR Image Storage",
    "missing_attribute": "StudyInstanceUID",
    "oversize": "above the limit",
}


def test_valid_instance_is_accepted_routed_and_decoded(valid_ct_bytes):
    ds = parse_instance(valid_ct_bytes, max_bytes=VALID_CT_MAX_BYTES)
    assert route(ds) == "CT"
    pixels = decode_pixels(ds)
    assert pixels.shape == (128, 128)
    assert pixels.dtype == pydicom.dcmread(io.BytesIO(valid_ct_bytes)).pixel_array.dtype


@pytest.mark.parametrize("name", sorted(DETAIL_MENTIONS))
def test_broken_instance_is_rejected_with_reason(broken_instances, name):
    broken = broken_instances[name]
    with pytest.raises(RejectedInstance) as caught:
        parse_instance(broken.data, max_bytes=broken.max_bytes)
    assert caught.value.reason == broken.reason
    assert DETAIL_MENTIONS[name] in caught.value.detail


@pytest.mark.parametrize("name", ["short_pixel_data", "unknown_sop_class", "missing_pixel_data"])
def test_rejection_names_the_instance_when_it_can(broken_instances, valid_ct_bytes, name):
    expected = pydicom.dcmread(io.BytesIO(valid_ct_bytes)).SOPInstanceUID
    with pytest.raises(RejectedInstance) as caught:
        parse_instance(broken_instances[name].data, max_bytes=VALID_CT_MAX_BYTES)
    assert caught.value.sop_instance_uid == expected


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.9, 0.999], ids=lambda f: f"cut_at_{f:.1%}")
def test_cut_anywhere_is_rejected(valid_ct_bytes, fraction):
    with pytest.raises(RejectedInstance) as caught:
        parse_instance(valid_ct_bytes[: int(len(valid_ct_bytes) * fraction)], max_bytes=VALID_CT_MAX_BYTES)
    assert caught.value.reason == "truncated"


def test_route_rejects_unknown_sop_class():
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    with pytest.raises(RejectedInstance) as caught:
        route(ds)
    assert caught.value.reason == "unknown_sop_class"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_rejected_instance(data):
    try:
        parse_instance(data, max_bytes=VALID_CT_MAX_BYTES)
    except RejectedInstance:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_bytes_after_a_part10_preamble_raise_only_rejected_instance(data):
    """Past the 'DICM' magic the bytes reach pydicom's element parser."""
    try:
        parse_instance(bytes(128) + b"DICM" + data, max_bytes=VALID_CT_MAX_BYTES)
    except RejectedInstance:
        pass


def _mutated(valid: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buffer = bytearray(valid[:cut])
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8),
    cut=st.integers(min_value=0, max_value=40000),
)
def test_corrupted_real_instance_raises_only_rejected_instance(valid_ct_bytes, edits, cut):
    """Random bytes rarely get past the preamble; corrupting a real file exercises the parser deeper."""
    try:
        parse_instance(_mutated(valid_ct_bytes, edits, cut), max_bytes=VALID_CT_MAX_BYTES)
    except RejectedInstance:
        pass


@pytest.mark.parametrize("fault", [ImportError("cannot import name 'codes'"), MemoryError(),
                                   RuntimeError("deadlock detected by _ModuleLock('pydicom.sr.coding')")],
                         ids=lambda e: type(e).__name__)
def test_a_fault_of_this_process_is_not_blamed_on_the_instance(valid_ct_bytes, monkeypatch, fault):
    """An import deadlocking between threads (seen once: a valid instance dead-lettered as `malformed`)
    or memory running out is retried, not dead-lettered."""
    from ingest import decode
    from oncostream.errors import ProcessFault

    def fails(*_args):
        raise fault

    monkeypatch.setattr(decode, "_check_required", fails)
    with pytest.raises(ProcessFault) as caught:
        parse_instance(valid_ct_bytes, max_bytes=VALID_CT_MAX_BYTES)
    assert not isinstance(caught.value, RejectedInstance)
    assert type(fault).__name__ in str(caught.value)


@pytest.mark.parametrize("error", [ValueError("invalid literal for int()"), RecursionError("too deep"),
                                   NotImplementedError("Unknown Value Representation 'Uz' in tag (0002,0010)")],
                         ids=lambda e: type(e).__name__)
def test_a_value_that_cannot_be_read_is_still_malformed(valid_ct_bytes, monkeypatch, error):
    from ingest import decode

    def fails(*_args):
        raise error

    monkeypatch.setattr(decode, "_check_required", fails)
    with pytest.raises(RejectedInstance) as caught:
        parse_instance(valid_ct_bytes, max_bytes=VALID_CT_MAX_BYTES)
    assert caught.value.reason == "malformed"
