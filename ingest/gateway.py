"""`oncostream gateway`: a DICOM C-STORE SCP (pynetdicom) in front of oncostream.

DICOM PS3.4 Annex B (Storage Service Class, SCP role), PS3.7 9.1.1 (C-STORE), PS3.8 (associations).

Modalities and PACS push studies here as they always do; each instance is kept as Part 10 bytes
exactly as received (file meta included, pixel data never re-encoded) and handed to a ``Destination``:
``KafkaDestination`` here (topic ``settings.topic_dicom``, key StudyInstanceUID, the same headers and
claim checks as ``oncostream produce``), or the embedded study lifecycle (oncostream.app.gateway).

The C-STORE response tells the sender the truth, so that it keeps or retries the instance itself:
0x0000 once the instance is durable (Kafka acknowledged it, or it is fsync'd in the embedded spool);
0xC000 "cannot understand" with an ErrorComment when the instance is refused (RejectedInstance: sending
it again will not help); 0xA700 "out of resources" when handing it on failed (it may work later).
Associations from calling AE titles outside ``--allow`` are rejected before any data moves.

Received data sets are streamed to a private temporary file while they arrive (pynetdicom's
STORE_RECV_CHUNKED_DATASET), so the gateway's memory does not grow with what a sender declares: an
instance above ``settings.max_instance_bytes`` is refused (0xC000 ``oversize``) from its file size,
without being read, and an association whose data set passes four times that while it arrives is
aborted (so a sender cannot fill the disk either). The gateway listens on loopback unless ``--host``
says otherwise.
"""

from __future__ import annotations

import logging
import ssl
import uuid
import weakref
from abc import ABC, abstractmethod
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    Verification,
)

from ingest.decode import NOT_SCREENED_SOP_CLASSES
from oncostream.errors import NotScreened, OncostreamError, RejectedInstance
from oncostream.ids import loggable_uid
from oncostream.settings import Settings

log = logging.getLogger(__name__)

# the image storage SOP classes oncostream has a pipeline for (ingest.decode.SOP_CLASS_ROUTES)
STORAGE_SOP_CLASSES = (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
)
# every syntax the decoders (pydicom plugins: pylibjpeg-openjpeg, python-gdcm, pyjpegls; DALI for
# JPEG 2000; DCMTK dcmdjpeg for 12-bit JPEG Extended) read back pixel-exact or as encoded;
# uncompressed first, so that a sender that can choose prefers what costs nothing to decode
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

# PS3.4 B.2.3 C-STORE statuses
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_ERROR_COMMENT_MAX = 64  # ErrorComment is LO (PS3.5 6.2)
# a data set this many times max_instance_bytes is aborted while it arrives instead of being answered
_ABORT_FACTOR = 4
# how long one C-STORE may wait for Kafka before answering "out of resources": below the 60 s DIMSE
# timeout modalities commonly use, so the sender hears a status instead of timing out itself
PRODUCE_TIMEOUT_S = 30.0


class GatewayError(OncostreamError):
    """The gateway cannot start or hand instances on."""


class Destination(ABC):
    """Where accepted instances go. ``deliver`` returns once the instance is safely handed on."""

    @abstractmethod
    def deliver(self, data: bytes, calling_ae: str) -> None:
        """Hand on one Part 10 instance; RejectedInstance if it is unusable, anything else if handing on failed."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Finish what was accepted and release resources."""


class KafkaDestination(Destination):
    """Produce to ``settings.topic_dicom`` exactly as ``oncostream produce`` does; wait for the ack,
    so that success to the modality means the broker has the instance."""

    def __init__(self, settings: Settings, bootstrap: str, produce_timeout_s: float = PRODUCE_TIMEOUT_S):
        from oncostream.claim_store import claim_store_from_settings
        from oncostream.streaming import make_producer

        self.settings = settings
        self.topic = settings.topic_dicom
        self.produce_timeout_s = produce_timeout_s
        self._claims = claim_store_from_settings(settings)
        try:
            self._producer = make_producer(bootstrap, client_id="oncostream-gateway", settings=settings,
                                           linger_ms=0, max_block_ms=int(produce_timeout_s * 1000))
        except Exception as exc:  # kafka-python raises NoBrokersAvailable and friends
            raise GatewayError(f"cannot reach Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from exc

    def deliver(self, data: bytes, calling_ae: str) -> None:
        from ingest.decode import parse_instance
        from oncostream.contracts import CONTENT_TYPE_CLAIM_CHECK, CONTENT_TYPE_DICOM

        # parse here too: a modality learns at once that an instance is unusable, instead of the
        # instance surfacing later in the dead-letter topic where nobody at the modality looks
        ds = parse_instance(data, max_bytes=self.settings.max_instance_bytes)
        headers = {"content-type": CONTENT_TYPE_DICOM, "program": self.settings.program,
                   "trace-id": uuid.uuid4().hex}
        value = data
        if len(data) > self.settings.inline_limit_bytes:
            value = self._claims.write(data).model_dump_json().encode()
            headers["content-type"] = CONTENT_TYPE_CLAIM_CHECK
        future = self._producer.send(self.topic, key=str(ds.StudyInstanceUID).encode(), value=value,
                                     headers=[(k, v.encode()) for k, v in headers.items()])
        future.get(timeout=self.produce_timeout_s)

    def close(self) -> None:
        self._producer.flush(timeout=self.produce_timeout_s)
        self._producer.close(timeout=self.produce_timeout_s)


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return status


class Gateway:
    """The storage SCP: association policy, presentation contexts, and the C-STORE handler."""

    def __init__(self, destination: Destination, ae_title: str = "ONCOSTREAM",
                 allow: list[str] | None = None, max_instance_bytes: int | None = None):
        if max_instance_bytes is not None and (not isinstance(max_instance_bytes, int) or max_instance_bytes <= 0):
            raise ValueError(f"max_instance_bytes must be a positive int, got {max_instance_bytes!r}")
        if not isinstance(ae_title, str) or not 0 < len(ae_title.strip()) <= 16:
            raise ValueError(f"ae_title must be an AE title of 1..16 characters (PS3.5 6.2), got {ae_title!r}")
        for title in allow or []:
            if not isinstance(title, str) or not 0 < len(title.strip()) <= 16:
                raise ValueError(f"allow: {title!r} is not an AE title of 1..16 characters")
        self.destination = destination
        if max_instance_bytes is None:  # the destination's settings bound what it would parse anyway
            max_instance_bytes = getattr(getattr(destination, "settings", None), "max_instance_bytes", None)
        self.max_instance_bytes = max_instance_bytes
        # data sets go to a temporary file as their P-DATA arrives, not into memory: process-wide in
        # pynetdicom, and the gateway is its own process
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True  # associations addressed to another AE title are not ours
        if allow:
            self.ae.require_calling_aet = list(allow)
        for sop_class in STORAGE_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        # what modalities send along with the images (dose reports, secondary captures...): accepted so
        # that the sender hears success, then ignored (NotScreened) rather than refused at association
        for sop_class in sorted(NOT_SCREENED_SOP_CLASSES):
            self.ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.ae.add_supported_context(Verification)  # C-ECHO, so that modalities can test the link
        self._server = None
        # bytes of the data set each association is receiving (pynetdicom's reading thread, one per association)
        self._receiving: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def start(self, port: int, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen (without blocking); returns the bound port (``port`` 0 picks a free one). With
        ``ssl_context`` (oncostream.transport_security.dicom_server_tls) every association runs over TLS
        (PS3.15 B.1); a caller that does not speak TLS, or whose certificate the context refuses, gets none."""
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}")
        self._server = self.ae.start_server((host, port), block=False, ssl_context=ssl_context,
                                            evt_handlers=[(evt.EVT_C_STORE, self._on_c_store),
                                                          (evt.EVT_PDU_RECV, self._on_pdu)])
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_c_store(self, event) -> Dataset:
        from oncostream import metrics

        outcome, status = self._store(event)
        metrics.record(lambda: metrics.GATEWAY_STORES.labels(status=outcome).inc())
        return status

    def _store(self, event) -> tuple[str, Dataset]:
        """Hand one C-STORE on: (outcome for the metric, the status to answer)."""
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            data = self._received(event)
        except RejectedInstance as exc:
            log.warning("C-STORE from %s rejected: %s: %s", calling_ae, exc.reason, exc.detail)
            return "rejected", _status(STATUS_CANNOT_UNDERSTAND, f"{exc.reason}: {exc.detail}")
        except Exception as exc:  # noqa: BLE001 - the file meta of an odd request may not encode
            log.warning("C-STORE from %s: cannot encode the received data set: %s", calling_ae, exc)
            return "cannot_encode", _status(STATUS_CANNOT_UNDERSTAND, f"cannot encode data set: {type(exc).__name__}")
        try:
            self.destination.deliver(data, calling_ae)
        except NotScreened:  # a dose report or a secondary capture sent with the images: success, ignored
            log.info("C-STORE from %s: an object no pipeline reads, acknowledged and ignored", calling_ae)
            return "ignored", _status(STATUS_SUCCESS)
        except RejectedInstance as exc:
            log.warning("C-STORE of %s from %s rejected: %s", loggable_uid(exc.sop_instance_uid), calling_ae,
                        exc.reason)
            return "rejected", _status(STATUS_CANNOT_UNDERSTAND, f"{exc.reason}: {exc.detail}")
        except Exception as exc:  # noqa: BLE001 - handlers map every failure to an explicit status
            log.exception("C-STORE from %s: handing on failed", calling_ae)
            why = str(exc) if isinstance(exc, OncostreamError) else type(exc).__name__
            return "failed", _status(STATUS_OUT_OF_RESOURCES, f"cannot hand on instance: {why}")
        return "success", _status(STATUS_SUCCESS)

    def _on_pdu(self, event) -> None:
        """Count a C-STORE data set's bytes as its P-DATA arrives; abort the association once one passes
        _ABORT_FACTOR times the cap. Up to that, the data set is received into its temporary file and
        answered 0xC000 oversize (a sender stops on that, while it retries an abort), so the factor
        only bounds the disk a hostile sender can fill, per association."""
        if self.max_instance_bytes is None:
            return
        try:
            received = self._receiving.get(event.assoc, 0)
            for item in getattr(event.pdu, "presentation_data_value_items", None) or ():
                value = item.presentation_data_value
                if not value or value[0] & 0x01:  # a command fragment: a new message starts
                    received = 0
                    continue
                received += len(value) - 1
                if value[0] & 0x02:  # the data set's last fragment
                    received = 0
            self._receiving[event.assoc] = received
            if received > _ABORT_FACTOR * self.max_instance_bytes:
                self._receiving.pop(event.assoc, None)
                log.warning("C-STORE from %s: data set passed %d bytes while arriving; association aborted",
                            str(event.assoc.requestor.ae_title).strip(), _ABORT_FACTOR * self.max_instance_bytes)
                partial = getattr(getattr(event.assoc.dimse, "message", None), "_data_set_path", None)
                event.assoc.abort(block=False)  # from the reading thread: queue the A-ABORT, do not wait
                if isinstance(partial, Path):  # pynetdicom forgets the partial file of an aborted message
                    partial.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - an observer must not break the association
            log.debug("counting received data set bytes failed", exc_info=True)

    def _received(self, event) -> bytes:
        """The Part 10 bytes of a C-STORE request, refused as ``oversize`` from the size of the file
        pynetdicom streamed it to, before a byte of it is read into memory."""
        try:
            path = event.dataset_path
        except AttributeError:  # chunked receiving is off (another pynetdicom user reset it)
            data = event.encoded_dataset(include_meta=True)
            self._check_size(len(data))
            return data
        self._check_size(path.stat().st_size)
        return path.read_bytes()

    def _check_size(self, size: int) -> None:
        if self.max_instance_bytes is not None and size > self.max_instance_bytes:
            raise RejectedInstance("oversize", f"instance is {size} bytes, above the limit of "
                                               f"{self.max_instance_bytes} bytes")
