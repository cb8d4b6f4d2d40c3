"""Kafka sink: TriageEvent JSON to `oncostream.triage`, every DICOM output to `oncostream.results`.

Both keyed by StudyInstanceUID, so a consumer sees one study's outputs in order and can deduplicate
replays by key (output UIDs are deterministic, oncostream/uids.py). `flush()` returns only when the
broker acknowledged everything added (acks=all), which is what lets the worker commit offsets.
"""

from __future__ import annotations

from io import BytesIO

from pydicom import Dataset

from oncostream.contracts import CONTENT_TYPE_DICOM
from oncostream.study import StudyResult
from postprocess.base import Sink
from postprocess.errors import SinkError

CONTENT_TYPE_TRIAGE = "application/json"


def dicom_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes of an output dataset (preamble, DICM, file meta)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class KafkaSink(Sink):
    name = "kafka"
    announces_triage = True

    def __init__(self, producer, triage_topic: str, results_topic: str):
        """`producer` is a kafka-python KafkaProducer (acks="all"); the sink does not own it."""
        if not triage_topic or not results_topic:
            raise ValueError("triage_topic and results_topic must be non-empty topic names")
        self._producer = producer
        self.triage_topic = triage_topic
        self.results_topic = results_topic
        self._futures: dict[str, list] = {}  # StudyInstanceUID -> futures of its records, until acknowledged

    def add(self, result: StudyResult) -> None:
        event = result.event
        key = event.study_instance_uid.encode()
        futures = self._futures[event.study_instance_uid] = []  # a re-add resends: it replaces, never doubles
        outputs = [("sr", result.sr)] if result.sr is not None else []
        outputs += [("seg", ds) for ds in result.segs] + [("secondary", ds) for ds in result.secondary]
        try:
            for kind, ds in outputs:
                headers = [("content-type", CONTENT_TYPE_DICOM.encode()), ("kind", kind.encode()),
                           ("sop-instance-uid", str(ds.SOPInstanceUID).encode())]
                futures.append(self._producer.send(self.results_topic, key=key, value=dicom_bytes(ds),
                                                   headers=headers))
            # the triage event goes last: a consumer that sees it can fetch the SR it names
            headers = [("content-type", CONTENT_TYPE_TRIAGE.encode()),
                       ("schema-version", event.schema_version.encode())]
            futures.append(self._producer.send(self.triage_topic, key=key,
                                               value=event.model_dump_json().encode(), headers=headers))
        except Exception as exc:  # noqa: BLE001 - any send failure leaves the study unacknowledged
            raise SinkError(self.name, f"cannot queue outputs of study {event.study_instance_uid}: "
                                       f"{type(exc).__name__}: {exc}") from exc

    def flush(self, timeout_s: float = 60.0) -> None:
        """Forget a study's records only once every one was acknowledged: a study whose record failed keeps
        failing every flush until it is added again (resent) or discarded (dead-lettered)."""
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - kafka-python raises KafkaTimeoutError among others
            raise SinkError(self.name, f"flush failed: {type(exc).__name__}: {exc}",
                            studies=tuple(self._futures)) from exc
        failed: dict[str, str] = {}
        permanent = True
        for study, futures in list(self._futures.items()):
            problem = next((f for f in futures if not f.is_done or f.failed()), None)
            if problem is None:
                del self._futures[study]
            elif not problem.is_done:
                failed[study], permanent = f"not acknowledged within {timeout_s:.0f} s", False
            else:
                failed[study] = f"{type(problem.exception).__name__}: {problem.exception}"
                # kafka-python marks what may clear (timeouts, leader changes) as retriable
                permanent = permanent and not getattr(problem.exception, "retriable", False)
        if failed:
            raise SinkError(self.name, f"broker refused a record: {next(iter(failed.values()))}",
                            permanent=permanent, studies=tuple(failed))

    def discard(self, study_instance_uid: str) -> None:
        self._futures.pop(study_instance_uid, None)
