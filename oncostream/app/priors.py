"""Prior exams of a study's patient: from the results store first, else from the PACS.

``PriorLookup.find(study)`` returns the newest earlier exam of the same patient and modality, or None:

1. the results store (``priors(patient_key, ...)``, the patient keyed by a pseudonym: Study.patient_key);
2. when the store has none (a patient whose earlier rounds were read before oncostream kept a store, or
   by another installation), the PACS: C-FIND (Study Root, STUDY level) by the study's own PatientID
   (and IssuerOfPatientID when the PACS returns one), read from the study's first instance at query
   time and never stored or logged; among the earlier studies of that modality, the newest holding an
   oncostream SR is retrieved by C-GET (SERIES level) and read back into a PriorStudy
   (postprocess/sr_readback.py).

A failing lookup never fails the study: the error is logged (UIDs only) and handed back, so the
pipeline reads the study with the baseline rules and asks for review.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from oncostream.ids import loggable_uid
from oncostream.study import PriorStudy, Study

log = logging.getLogger(__name__)

MAMMOGRAPHY_CAD_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.50"
# the SR series oncostream writes (postprocess/sr.py), by modality of the screened study
_SR_SERIES = {"CT": "oncostream LDCT measurements", "MG": "oncostream mammography CAD"}


class PriorSource(Protocol):
    """What the results store offers (oncostream/store): earlier studies of one patient, newest first."""

    def priors(self, patient_key: str, modality: str, before: date | None,
               exclude_study_uid: str) -> list[PriorStudy]: ...


class PriorLookupError(Exception):
    """A prior could not be looked up (store or PACS unreachable, a reply that makes no sense)."""


@dataclass(frozen=True)
class PacsPriorQuery:
    """C-FIND + C-GET of a patient's earlier oncostream reports on one PACS (Q/R SCP)."""

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "ONCOSTREAM"
    timeout_s: float = 30.0
    program: str = "default"

    @classmethod
    def from_address(cls, address: str, **kwargs) -> PacsPriorQuery:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address: expected HOST:PORT, got {address!r}")
        return cls(host, int(port), **kwargs)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout_s
        ae.connection_timeout = min(self.timeout_s, 10.0)
        return ae

    def _find(self, assoc, query: Dataset) -> list[Dataset]:
        found = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PriorLookupError("C-FIND: no response (connection lost or timed out)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
            elif code != 0x0000:
                raise PriorLookupError(f"C-FIND status 0x{code:04X}")
        return found

    def priors(self, study: Study) -> list[PriorStudy]:
        """Earlier studies of the patient with an oncostream SR of this modality, newest first (at most one
        retrieved: the newest is what the follow-up rules compare with)."""
        from postprocess.sr_readback import SrReadError, lung_nodule_report_event, mammography_cad_event

        first = study.datasets[0] if study.datasets else None
        patient_id = str(first.get("PatientID", "") or "").strip() if first is not None else ""
        if not patient_id or study.modality not in _SR_SERIES:
            return []
        issuer = str(first.get("IssuerOfPatientID", "") or "").strip()
        current = study.study_date
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise PriorLookupError("C-FIND association to the PACS not established")
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientID = patient_id
            query.IssuerOfPatientID = ""
            query.StudyInstanceUID = ""
            query.StudyDate = f"-{(current - timedelta(days=1)).strftime('%Y%m%d')}" if current else ""
            studies = [s for s in self._find(assoc, query)
                       if str(s.StudyInstanceUID) != study.study_instance_uid
                       and (not issuer or not str(s.get("IssuerOfPatientID", "") or "") or
                            str(s.IssuerOfPatientID) == issuer)]
            studies.sort(key=lambda s: str(s.get("StudyDate", "")), reverse=True)
            for candidate in studies:
                series = Dataset()
                series.QueryRetrieveLevel = "SERIES"
                series.StudyInstanceUID = candidate.StudyInstanceUID
                series.SeriesInstanceUID = ""
                series.Modality = "SR"
                series.SeriesDescription = ""
                reports = [s for s in self._find(assoc, series)
                           if str(s.get("SeriesDescription", "")) == _SR_SERIES[study.modality]]
                if not reports:
                    continue
                for dataset in self._get_series(str(candidate.StudyInstanceUID), str(reports[0].SeriesInstanceUID)):
                    try:
                        event = (lung_nodule_report_event if study.modality == "CT" else mammography_cad_event)(
                            dataset, program=study.program or self.program)
                    except SrReadError as exc:
                        log.warning("prior SR %s not readable: %s", loggable_uid(str(dataset.SOPInstanceUID)), exc)
                        continue
                    return [PriorStudy(study_instance_uid=str(candidate.StudyInstanceUID),
                                       study_date=_date(candidate.get("StudyDate")), event=event)]
            return []
        finally:
            if assoc.is_established:
                assoc.release()

    def _get_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """C-GET of one series: the PACS sends its instances back over the same association (C-STORE
        sub-operations, PS3.4 C.4.3), which this SCU accepts for the two SR storage classes only."""
        received: list[Dataset] = []

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for sop_class in (Comprehensive3DSRStorage, MAMMOGRAPHY_CAD_SR_STORAGE):
            ae.add_requested_context(sop_class)
            roles.append(build_role(sop_class, scp_role=True))
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae, ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        if not assoc.is_established:
            raise PriorLookupError("C-GET association to the PACS not established")
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            final = None
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                if not status:
                    raise PriorLookupError("C-GET: no response (connection lost or timed out)")
                final = int(status.Status)
            if final not in (0x0000, 0xB000):
                raise PriorLookupError(f"C-GET status 0x{final:04X}" if final is not None else "C-GET: no status")
        finally:
            if assoc.is_established:
                assoc.release()
        return received


def _date(value) -> date | None:
    try:
        return datetime.strptime(str(value or "")[:8], "%Y%m%d").date()
    except ValueError:
        return None


@dataclass
class PriorLookup:
    """The store first, then the PACS; either may be absent."""

    store: PriorSource | None = None
    pacs: PacsPriorQuery | None = None

    def find(self, study: Study) -> tuple[PriorStudy | None, str | None]:
        """(the newest prior exam or None, why the lookup failed or None). Never raises."""
        try:
            if self.store is not None and study.patient_key:
                found = self.store.priors(study.patient_key, study.modality, study.study_date,
                                          study.study_instance_uid)
                if found:
                    return found[0], None
            if self.pacs is not None:
                found = self.pacs.priors(study)
                if found:
                    return found[0], None
            return None, None
        except Exception as exc:  # noqa: BLE001 - a failed lookup must not fail the study
            log.warning("prior lookup for study %s failed: %s: %s", loggable_uid(study.study_instance_uid),
                        type(exc).__name__, exc)
            return None, f"prior exams could not be looked up ({type(exc).__name__}); read with the baseline rules"


def prior_lookup(settings) -> PriorLookup:
    """The lookup the settings configure: the results store (``store_url``) and, with ``prior_query_pacs``,
    the PACS oncostream delivers its reports to (``pacs_address``, ``pacs_called_ae``)."""
    store = None
    if getattr(settings, "store_url", None) and getattr(settings, "pseudonym_key", None) is not None:
        from oncostream.store import open_store

        store = open_store(settings.store_url, allow_patient_identifiers=settings.allow_patient_identifiers)
    pacs = None
    if settings.pacs_address and getattr(settings, "prior_query_pacs", False):
        pacs = PacsPriorQuery.from_address(settings.pacs_address, called_ae=settings.pacs_called_ae,
                                           program=settings.program)
    return PriorLookup(store=store, pacs=pacs)
