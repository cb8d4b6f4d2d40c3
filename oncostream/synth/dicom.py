"""DICOM attributes every synthetic instance shares: synthetic patient, study, equipment and UIDs.

All identifiers derive from the phantom seed, so the same seed always gives byte-identical files, and
nothing resembles a real person (PS3.15 Annex E: no real identifiers ever enter a synthetic study).
"""

from __future__ import annotations

import datetime as _dt
import hashlib

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

MANUFACTURER = "oncostream-synth"
SOFTWARE_VERSION = "oncostream-synth 1"
_EPOCH = _dt.date(2020, 1, 6)


def synth_uid(kind: str, seed: int, *role: str) -> UID:
    """A valid UID that depends only on (kind, seed, role): deterministic, and unique across them."""
    return generate_uid(entropy_srcs=["oncostream-synth", kind, str(seed), *role])


def _seed_hash(kind: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{kind}:{seed}".encode()).digest()[:8], "big")


def study_datetime(kind: str, seed: int) -> tuple[str, str]:
    """(StudyDate, StudyTime) fixed by the seed: a weekday 2020-2024 between 08:00 and 17:59."""
    h = _seed_hash(kind, seed)
    day = _EPOCH + _dt.timedelta(days=7 * ((h % 250)) + (h >> 8) % 5)
    seconds = 8 * 3600 + (h >> 16) % (10 * 3600)
    return day.strftime("%Y%m%d"), f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def base_dataset(kind: str, seed: int, modality: str, sop_class_uid: str, sop_instance_uid: str,
                 study_instance_uid: str, series_instance_uid: str, series_number: int,
                 instance_number: int, description: str) -> Dataset:
    """Patient, General Study, General Series, General Equipment, SOP Common and file meta."""
    tag = "MG" if modality == "MG" else "CT"
    date, time = study_datetime(kind, seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "ONCOSTREAM1"

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.ContentDate = date
    ds.AcquisitionDate = date
    ds.StudyTime = time
    ds.SeriesTime = time
    ds.ContentTime = time
    ds.AcquisitionTime = time
    ds.AccessionNumber = f"S{tag}{seed % 10**8:08d}"
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "oncostream synthetic"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTH"
    ds.StudyDescription = description
    ds.SeriesDescription = description
    ds.ManufacturerModelName = "phantom"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.PatientName = f"SYNTH^{tag}{seed:04d}"
    ds.PatientID = f"SYNTH-{tag}-{seed:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F" if modality == "MG" else ("M" if _seed_hash(kind, seed) % 2 else "F")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom, no real patient"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.StudyID = f"{seed % 10**6}"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds
