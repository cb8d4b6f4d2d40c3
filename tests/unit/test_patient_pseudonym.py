"""Patient pseudonyms: a keyed hash links screening rounds without an identifier in clear."""

from __future__ import annotations

import hashlib
import hmac
import logging

import pytest
from pydantic import ValidationError
from pydicom import Dataset
from pydicom.uid import generate_uid

from ingest.assembly import Assembler
from oncostream.ids import patient_pseudonym
from oncostream.settings import Settings

KEY = b"program-secret-0123456789"


@pytest.mark.parametrize(("pid", "issuer"), [("SYNTH-CT-000001", "ONCOSTREAM-SYNTH"), ("12345", ""),
                                             ("Müller-7", "HOSP^A")], ids=["synthetic", "no-issuer", "non-ascii"])
def test_pseudonym_is_hmac_sha256_of_issuer_and_id(pid, issuer):
    expected = hmac.new(KEY, f"{issuer}\x1f{pid}".encode(), hashlib.sha256).hexdigest()
    assert patient_pseudonym(pid, issuer, KEY) == expected
    assert pid not in expected


def test_pseudonym_depends_on_key_issuer_and_id():
    base = patient_pseudonym("A1", "X", KEY)
    assert base == patient_pseudonym(" A1 ", "X", KEY)  # DICOM padding is not part of the identifier
    assert patient_pseudonym("A1", "X", KEY + b"!") != base
    assert patient_pseudonym("A1", "Y", KEY) != base
    assert patient_pseudonym("A", "1X", KEY) != patient_pseudonym("A1", "X", KEY)
    assert patient_pseudonym("", "X", KEY) is None


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="key"):
        patient_pseudonym("A1", "", b"short")
    with pytest.raises(ValidationError, match="pseudonym_key"):
        Settings(pseudonym_key="short")
    assert "program-secret" not in repr(Settings(pseudonym_key=KEY.decode()))


def _exam(patient_id: str) -> list[Dataset]:
    study = generate_uid()
    views = []
    for key in ("LCC", "LMLO", "RCC", "RMLO"):
        ds = Dataset()
        ds.Modality = "MG"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.ImageLaterality, ds.ViewPosition = key[0], key[1:]
        ds.PatientID = patient_id
        ds.IssuerOfPatientID = "ONCOSTREAM-SYNTH"
        views.append(ds)
    return views


def test_assembly_sets_the_patient_key_and_never_logs_it(caplog):
    caplog.set_level(logging.DEBUG)
    assembler = Assembler(Settings(pseudonym_key=KEY.decode()))
    studies = [s for ds in _exam("SYNTH-MG-000042") for s in assembler.add(ds)]
    (study,) = studies
    assert study.patient_key == patient_pseudonym("SYNTH-MG-000042", "ONCOSTREAM-SYNTH", KEY)
    assert study.patient_key not in caplog.text and "SYNTH-MG-000042" not in caplog.text


def test_without_a_key_no_study_is_linked_and_assembly_says_why(caplog, monkeypatch):
    import ingest.assembly as assembly

    monkeypatch.setattr(assembly, "_warned_no_pseudonym_key", False)
    caplog.set_level(logging.WARNING)
    assembler = Assembler(Settings())
    Assembler(Settings())
    (study,) = [s for ds in _exam("SYNTH-MG-000043") for s in assembler.add(ds)]
    assert study.patient_key is None
    assert caplog.text.count("ONCOSTREAM_PSEUDONYM_KEY is not set") == 1
