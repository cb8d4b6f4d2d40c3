"""DICOMweb sink: STOW-RS of every SR, SEG and secondary object of a result.

DICOM PS3.18 10.5 (Store Transaction): ``POST {root}/studies`` with a
``multipart/related; type="application/dicom"`` body of Part 10 files.

``add()`` only queues; ``flush()`` posts what is queued in one request and retries transient failures
(connection errors, timeouts, 408/429/5xx) with exponential backoff. A 200/202 answer lists what was
stored (ReferencedSOPSequence) and what failed (FailedSOPSequence); failed objects whose reason is
transient stay queued for the next attempt; objects refused for good are dropped with their whole study,
which the permanent SinkError names, so later studies are not held behind them. Idempotent like the
C-STORE sink: output UIDs are derived from the inputs, and a PACS keeps one instance per SOPInstanceUID.
"""

from __future__ import annotations

import io
import logging
import time
import uuid

import requests
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from oncostream.study import StudyResult
from oncostream.transport_security import refuse_credentials_in_clear
from postprocess.base import Sink
from postprocess.errors import SinkError
from postprocess.pacs_sink import Backoff, result_datasets

log = logging.getLogger(__name__)

_RETRY_HTTP = {408, 429, 500, 502, 503, 504}
# PS3.18 Table 10.5.3-1 / PS3.4 B.2.3 failure reasons (0008,1197) that may clear on their own:
# out of resources (0xA7xx) and processing failure (0x0110)
_TRANSIENT_REASONS = {0x0110}
_TAG_FAILED_SOP_SEQUENCE = "00081198"
_TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"
_TAG_FAILURE_REASON = "00081197"


def part10_bytes(ds: Dataset) -> bytes:
    """Encode as a DICOM Part 10 file (preamble, file meta). Objects built in memory without a
    transfer syntax get Explicit VR Little Endian, which every STOW-RS origin server accepts."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset(meta) if meta is not None else FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset(ds)  # shallow copy: the caller's object keeps its own file meta
        ds.file_meta = meta
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def multipart_related(parts: list[bytes], boundary: str) -> bytes:
    """A ``multipart/related`` body (RFC 2387) with one ``application/dicom`` part per file."""
    body = io.BytesIO()
    for part in parts:
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue()


class StowRsSink(Sink):
    """STOW-RS to one DICOMweb origin server, e.g. ``http://127.0.0.1:8042/dicom-web``. Credentials
    go only over https, or plain http to loopback (InsecureTransport naming ``root_url`` otherwise)."""

    name = "stow-rs"

    def __init__(self, root_url: str, username: str | None = None, password: str | None = None,
                 backoff: Backoff = Backoff(), request_timeout_s: float = 30.0,
                 session: requests.Session | None = None):
        if not isinstance(root_url, str) or not root_url.startswith(("http://", "https://")):
            raise ValueError(f"root_url must be an http(s) URL of the DICOMweb root, got {root_url!r}")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if username is not None:
            # basic auth in clear would hand the PACS account to anyone on the path
            refuse_credentials_in_clear(root_url, "root_url")
        self.studies_url = root_url.rstrip("/") + "/studies"
        self.backoff = backoff
        self.request_timeout_s = request_timeout_s
        self._session = session or requests.Session()
        if username is not None:
            self._session.auth = (username, password)
        self._queue: dict[str, bytes] = {}  # SOPInstanceUID -> Part 10; a re-add replaces, never doubles
        self._study_of: dict[str, str] = {}  # SOPInstanceUID -> StudyInstanceUID of the queued objects

    def add(self, result: StudyResult) -> None:
        for ds in result_datasets(result):
            self._queue[str(ds.SOPInstanceUID)] = part10_bytes(ds)
            self._study_of[str(ds.SOPInstanceUID)] = result.event.study_instance_uid

    def discard(self, study_instance_uid: str) -> None:
        for sop in [s for s, study in self._study_of.items() if study == study_instance_uid]:
            self._queue.pop(sop, None)
            del self._study_of[sop]

    def _refuse(self, sops, detail: str) -> SinkError:
        """Drop the studies of refused objects from the queue: the error names them for the dead-letter sink."""
        studies = {self._study_of[s] for s in sops if s in self._study_of}
        for study in studies:
            self.discard(study)
        return SinkError(self.name, detail, permanent=True, studies=tuple(sorted(studies)))

    def flush(self, timeout_s: float = 60.0) -> None:
        """Post everything queued; retries transient failures until ``timeout_s`` or the attempts run out."""
        deadline = time.monotonic() + timeout_s
        delays = self.backoff.delays()
        while self._queue:
            try:
                self._post_pending(deadline)
            except _Transient as exc:
                delay = next(delays, None)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise SinkError(self.name, f"{len(self._queue)} object(s) not stored at "
                                    f"{self.studies_url}: {exc}",
                                studies=tuple(sorted(set(self._study_of.values())))) from exc
                log.warning("STOW-RS to %s failed (%s); retrying in %.1f s", self.studies_url, exc, delay)
                time.sleep(delay)

    def close(self) -> None:
        self._session.close()

    def _post_pending(self, deadline: float) -> None:
        boundary = uuid.uuid4().hex
        sent = list(self._queue)
        body = multipart_related([self._queue[uid] for uid in sent], boundary)
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        timeout = max(1.0, min(self.request_timeout_s, deadline - time.monotonic()))
        try:
            response = self._session.post(self.studies_url, data=body, headers=headers, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in _RETRY_HTTP:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code not in (200, 202, 409):
            # 4xx other than those: the request itself is wrong; sending it again will not help
            raise self._refuse(sent, f"HTTP {response.status_code} from {self.studies_url}: "
                                     f"{response.text[:300]}")
        failed = _failed_instances(response)
        if response.status_code == 409 and not failed:
            raise self._refuse(sent, f"HTTP 409 from {self.studies_url} without a FailedSOPSequence: "
                                     f"{response.text[:300]}")
        for uid in sent:
            if uid not in failed:
                self._queue.pop(uid, None)
                self._study_of.pop(uid, None)
        permanent = {uid: reason for uid, reason in failed.items() if not _is_transient(reason)}
        if permanent:
            listing = ", ".join(f"{uid} (0x{reason:04X})" for uid, reason in permanent.items())
            raise self._refuse(permanent, f"origin server refused {len(permanent)} object(s): {listing}")
        if failed:
            raise _Transient(f"{len(failed)} object(s) failed with a transient reason")


def _is_transient(reason: int) -> bool:
    return (reason & 0xFF00) == 0xA700 or reason in _TRANSIENT_REASONS


def _failed_instances(response: requests.Response) -> dict[str, int]:
    """SOPInstanceUID -> FailureReason of every item of the response's FailedSOPSequence."""
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    failed: dict[str, int] = {}
    for item in (body.get(_TAG_FAILED_SOP_SEQUENCE, {}) or {}).get("Value", []) if isinstance(body, dict) else []:
        uid = (item.get(_TAG_REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or [""])[0]
        reason = (item.get(_TAG_FAILURE_REASON, {}).get("Value") or [0x0110])[0]
        failed[str(uid)] = int(reason)
    return failed


class _Transient(Exception):
    """A failure worth retrying (network, timeout, busy or failing server)."""
