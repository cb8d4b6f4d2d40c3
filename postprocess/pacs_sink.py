"""PACS sink: DICOM C-STORE SCU (pynetdicom) of every SR, SEG and secondary object of a result.

DICOM PS3.4 Annex B (Storage Service Class), PS3.7 9.1.1 (C-STORE).

``add()`` only queues; ``flush()`` opens one association, sends everything queued, and retries what
did not get through with exponential backoff. A permanent refusal (a status that sending again will not
change) drops the refused study's objects from the queue and raises a permanent SinkError naming it, so
that study is dead-lettered with the reason and later studies are not held behind it. Delivery is idempotent because output UIDs are
derived from the inputs: a PACS keeps one instance per SOPInstanceUID, so a replay after a crash
re-sends the same objects and changes nothing.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context

from oncostream.ids import loggable_uid
from oncostream.study import StudyResult
from postprocess.base import Sink
from postprocess.errors import SinkError

log = logging.getLogger(__name__)

# PS3.4 B.2.3: 0xB000, 0xB006, 0xB007 are warnings; the instance is stored
_WARNING_STATUSES = {0xB000, 0xB006, 0xB007}
# PS3.4 B.2.3 + PS3.7 C: "out of resources" (0xA7xx) and "processing failure" (0x0110) may clear on
# their own; "data set does not match SOP class" (0xA9xx), "cannot understand" (0xCxxx) and refused
# SOP classes (0x0122) will not, so they fail at once
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: at most 128 presentation contexts per association


def result_datasets(result: StudyResult) -> list[Dataset]:
    """Every DICOM object of a study result, in the order a reader wants them: SR, SEG, then the rest."""
    return [ds for ds in [result.sr, *result.segs, *result.secondary] if ds is not None]


def _is_transient(status: int) -> bool:
    return (status & 0xFF00) == 0xA700 or status == 0x0110


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """pynetdicom encodes with the dataset's file-meta transfer syntax; objects built in memory
    may have none, and Explicit VR Little Endian is what every Storage SCP must accept."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    out = copy.copy(ds)
    out.file_meta = FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial_s`` * 2**attempt, capped at ``max_s``, at most ``attempts`` tries."""

    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.initial_s < 0 or self.max_s < 0:
            raise ValueError("initial_s and max_s must be >= 0")

    def delays(self) -> Iterator[float]:
        """The waits between attempts (``attempts - 1`` of them)."""
        for attempt in range(self.attempts - 1):
            yield min(self.initial_s * 2**attempt, self.max_s)


class PacsSink(Sink):
    """C-STORE SCU to one PACS (called AE title at host:port)."""

    name = "pacs"

    def __init__(self, host: str, port: int, called_ae: str = "ANY-SCP", calling_ae: str = "ONCOSTREAM",
                 backoff: Backoff = Backoff(), network_timeout_s: float = 30.0):
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port!r}")
        for arg, value in (("called_ae", called_ae), ("calling_ae", calling_ae)):
            if not isinstance(value, str) or not 0 < len(value.strip()) <= 16:
                raise ValueError(f"{arg} must be an AE title of 1..16 characters (PS3.5 6.2), got {value!r}")
        self.host, self.port = host, port
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.backoff = backoff
        self.network_timeout_s = network_timeout_s
        self._queue: dict[str, Dataset] = {}  # SOPInstanceUID -> object; a re-add replaces, never doubles
        self._study_of: dict[str, str] = {}  # SOPInstanceUID -> StudyInstanceUID of the queued objects

    @classmethod
    def from_address(cls, address: str, **kwargs) -> PacsSink:
        """``HOST:PORT`` (as in ``ORTHANC_DICOM``)."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"address must be HOST:PORT, got {address!r}")
        return cls(host, int(port), **kwargs)

    def add(self, result: StudyResult) -> None:
        for ds in result_datasets(result):
            self._queue[str(ds.SOPInstanceUID)] = _with_transfer_syntax(ds)
            self._study_of[str(ds.SOPInstanceUID)] = result.event.study_instance_uid

    def discard(self, study_instance_uid: str) -> None:
        for sop in [s for s, study in self._study_of.items() if study == study_instance_uid]:
            self._queue.pop(sop, None)
            del self._study_of[sop]

    def flush(self, timeout_s: float = 60.0) -> None:
        """Send everything queued; retries transient failures until ``timeout_s`` or the attempts run out."""
        deadline = time.monotonic() + timeout_s
        delays = self.backoff.delays()
        last_error = ""
        while self._queue:
            try:
                self._send_pending(deadline)
            except _Permanent as exc:
                # a refused object's study, or every queued study when the association itself is refused
                studies = ({self._study_of[exc.sop_uid]} if exc.sop_uid in self._study_of
                           else set(self._study_of.values()))
                for study in studies:
                    self.discard(study)
                raise SinkError(self.name, f"{self.called_ae}@{self.host}:{self.port} refused: {exc}",
                                permanent=True, studies=tuple(sorted(studies))) from exc
            except _Transient as exc:
                last_error = str(exc)
                delay = next(delays, None)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise SinkError(self.name, f"{len(self._queue)} object(s) not delivered to "
                                    f"{self.called_ae}@{self.host}:{self.port}: {last_error}",
                                studies=tuple(sorted(set(self._study_of.values())))) from exc
                log.warning("C-STORE to %s:%d failed (%s); retrying in %.1f s", self.host, self.port, exc, delay)
                time.sleep(delay)

    def _send_pending(self, deadline: float) -> None:
        """One association: send queued objects, dropping each from the queue once stored."""
        ae = AE(ae_title=self.calling_ae)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.network_timeout_s
        ae.connection_timeout = min(self.network_timeout_s, 10.0)
        contexts = self._contexts()
        assoc = ae.associate(self.host, self.port, contexts=contexts[:_MAX_CONTEXTS], ae_title=self.called_ae)
        if assoc.is_rejected:
            # PS3.8 9.3.4: result 2 "rejected-transient" may clear; 1 "rejected-permanent" will not
            primitive = getattr(assoc.acceptor, "primitive", None)
            result = getattr(primitive, "result", None)
            reason = getattr(primitive, "reason_str", "") or ""
            raise (_Permanent if result == 1 else _Transient)(f"association rejected {reason}".strip())
        if not assoc.is_established:
            raise _Transient("association not established (peer unreachable or aborted)")
        try:
            for sop_uid, ds in list(self._queue.items()):
                if time.monotonic() >= deadline:
                    raise _Transient("flush deadline reached")
                self._store_one(assoc, sop_uid, ds)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store_one(self, assoc, sop_uid: str, ds: Dataset) -> None:
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted presentation context for this SOP class / syntax
            raise _Permanent(f"{sop_uid}: {exc}", sop_uid) from exc
        if not status or "Status" not in status:
            raise _Transient(f"{sop_uid}: no C-STORE response (connection lost or timed out)")
        code = int(status.Status)
        if code == 0x0000 or code in _WARNING_STATUSES:
            if code:
                log.info("C-STORE of %s stored with warning 0x%04X", loggable_uid(sop_uid), code)
            del self._queue[sop_uid]
            self._study_of.pop(sop_uid, None)
            return
        comment = str(status.get("ErrorComment", "")).strip()
        detail = f"{sop_uid}: C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")
        if _is_transient(code):
            raise _Transient(detail)
        raise _Permanent(detail, sop_uid)

    def _contexts(self):
        """One presentation context per SOP class x transfer syntax queued; uncompressed objects also
        offer both little-endian syntaxes so pynetdicom can re-encode for a picky SCP."""
        wanted: dict[str, list[UID]] = {}
        for ds in self._queue.values():
            syntaxes = wanted.setdefault(str(ds.SOPClassUID), [])
            ts = UID(ds.file_meta.TransferSyntaxUID)
            for candidate in ([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
                              if not ts.is_compressed else [ts]):
                if candidate not in syntaxes:
                    syntaxes.append(candidate)
        contexts = []
        for sop_class, syntaxes in wanted.items():
            for ts in syntaxes:  # one syntax per context, so the SCP can accept each independently
                contexts.append(build_context(sop_class, [ts]))
        return contexts


class _Transient(Exception):
    """A failure worth retrying (network, busy peer, out of resources)."""


class _Permanent(Exception):
    """A failure retrying will not fix (SOP class refused, data set rejected); ``sop_uid`` is the refused
    object, None when the whole association was refused."""

    def __init__(self, detail: str, sop_uid: str | None = None):
        self.sop_uid = sop_uid
        super().__init__(detail)
