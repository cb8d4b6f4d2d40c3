"""`oncostream gateway`: the DICOM C-STORE SCP (ingest.gateway) wired to Kafka or to the study lifecycle.

Embedded mode (``--out``): an instance is answered 0x0000 only once it is durable, written and fsync'd
into ``OUT/spool/`` (replayed into assembly when the gateway starts again), so a crash loses nothing
acknowledged. Spooled instances leave the spool when their study is published (deleted) or dead-lettered
(moved to ``OUT/rejected/``, with one `rejected.jsonl` line each). The answers follow FAILURE_POLICY:
0xC000 with a reason for an instance parsing, routing or assembly refuses; 0xA700 while the instance
cannot be made durable or the rejection log is unavailable, or after the pipeline thread failed.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from pathlib import Path

from ingest.gateway import Destination, Gateway, GatewayError, KafkaDestination
from oncostream.app.lifecycle import Outcome, RejectionLog, StudyLifecycle, validate
from oncostream.errors import NotScreened, RejectedInstance
from oncostream.settings import Settings

log = logging.getLogger(__name__)

_SPOOL = "spool"
_REJECTED = "rejected"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LockedAssembler:
    """What the lifecycle tells the assembler (finished studies), under the destination's lock."""

    def __init__(self, assembler, lock: threading.Lock):
        self._assembler, self._lock = assembler, lock

    def finished(self, key: str) -> None:
        with self._lock:
            self._assembler.finished(key)


class PipelineDestination(Destination):
    """The embedded pipeline: a durable spool, assembly under a lock (C-STORE handlers run on one thread
    per association), the study lifecycle on one worker thread, and a timer thread that closes studies
    quiet for ``settings.assembly_timeout_s``. ``pipeline`` and ``sinks`` default to the configured
    backend, and to the file sink under ``out`` with the configured deliveries (PACS, FHIR, the results
    store), as ``run`` and the worker have."""

    def __init__(self, settings: Settings, out: Path, pipeline=None, sinks: list | None = None):
        from ingest.assembly import Assembler
        from oncostream.app.pipeline import Pipeline, delivery_sinks, make_backend
        from postprocess.file_sink import FileSink

        self.settings = settings
        self.out = Path(out)
        self._spool = self.out / _SPOOL
        self._rejected = self.out / _REJECTED
        for folder in (self._spool, self._rejected):
            folder.mkdir(parents=True, exist_ok=True)
        self._backend = None
        if pipeline is None:
            self._backend = make_backend(settings)
            pipeline = Pipeline(settings, self._backend)
        self._rejections = RejectionLog(self.out / "rejected.jsonl",
                                        origin_of=lambda source: f"{_REJECTED}/{self._name(source[2])}")
        self._assembler = Assembler(settings)
        self._lock = threading.Lock()
        self._studies: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._failure: str | None = None  # set when the pipeline thread met an error no policy row covers
        if sinks is None:
            sinks = [FileSink(self.out), *delivery_sinks(settings, files_dir=self.out)]
        self.lifecycle = StudyLifecycle(settings, pipeline, sinks,
                                        self._rejections, self._wait,
                                        assembler=_LockedAssembler(self._assembler, self._lock))
        self._seq = self._replay()
        self._expiry_interval_s = min(1.0, settings.assembly_timeout_s / 4)
        self._worker = threading.Thread(target=self._process_loop, name="gateway-pipeline", daemon=True)
        self._expirer = threading.Thread(target=self._expire_loop, name="gateway-expiry", daemon=True)
        self._worker.start()
        self._expirer.start()

    @staticmethod
    def _name(seq: int) -> str:
        return f"{seq:012d}.dcm"

    def deliver(self, data: bytes, calling_ae: str) -> None:
        from oncostream import metrics

        metrics.record(metrics.INSTANCES.inc)
        metrics.record(metrics.INSTANCE_BYTES.inc, len(data))
        if self._failure is not None or not self._worker.is_alive():
            raise GatewayError(f"pipeline stopped: {self._failure or 'thread ended'}")
        if self.lifecycle.paused:
            raise GatewayError("rejection log unavailable")
        try:
            ds, modality = validate(data, self.settings)
        except NotScreened:
            raise  # answered 0x0000 and not kept: nothing to process
        except RejectedInstance as exc:
            self._reject(exc, f"c-store from {calling_ae}")
            raise
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
        path = self._spool / self._name(seq)
        try:
            self._write_durably(path, data)
        except OSError as exc:  # disk full, spool unwritable: the sender keeps the instance and retries
            raise GatewayError(f"cannot spool instance: {exc.strerror or type(exc).__name__}") from exc
        source = ("spool", 0, seq)
        try:
            with self._lock:
                studies = self._assembler.add(ds, source=source, modality=modality, nbytes=len(data))
                held = self._assembler.holds(source) or any(source in s.sources for s in studies)
        except RejectedInstance as exc:
            path.unlink(missing_ok=True)
            self._reject(exc, f"c-store from {calling_ae}")
            raise
        if not held:  # a localizer, a non-screening view, a late instance of a finished study
            path.unlink(missing_ok=True)
        for study in studies:
            self._studies.put(study)
        self._record_in_flight()

    def _reject(self, exc: RejectedInstance, origin: str) -> None:
        """One line in the rejection log, durable before the sender hears 0xC000; an unwritable log
        raises (0xA700), so the sender keeps the instance."""
        self._rejections.add_instance(exc.reason, exc.detail, origin, exc.sop_instance_uid)
        self._rejections.flush()

    @staticmethod
    def _write_durably(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def _replay(self) -> int:
        """Assemble again what was spooled before a restart; returns the next spool sequence number."""
        for leftover in self._spool.glob("*.tmp"):  # never answered 0x0000: the sender still has it
            leftover.unlink(missing_ok=True)
        paths = sorted(self._spool.glob("*.dcm"))
        if paths:
            log.info("replaying %d spooled instances", len(paths))
        for path in paths:
            seq = int(path.stem)
            source = ("spool", 0, seq)
            try:
                ds, modality = validate(path.read_bytes(), self.settings)
                studies = self._assembler.add(ds, source=source, modality=modality, nbytes=path.stat().st_size)
            except RejectedInstance as exc:  # accepted before under other settings: dead-letter it now
                self._rejections.add_instance(exc.reason, exc.detail, f"{_REJECTED}/{path.name}",
                                              exc.sop_instance_uid)
                self._rejections.flush()
                os.replace(path, self._rejected / path.name)
                continue
            for study in studies:
                self._studies.put(study)
        return int(paths[-1].stem) + 1 if paths else 0

    def _record_in_flight(self) -> None:
        from oncostream import metrics

        metrics.record(lambda: metrics.IN_FLIGHT.set(len(self._assembler) + self._studies.qsize()))

    def close(self) -> None:
        """Stop the timer, finish the studies already complete, and leave studies still assembling in the
        spool (a restart replays them and they go on assembling); backoffs end at once."""
        self._stop.set()
        self._expirer.join(timeout=10)
        self._studies.put(None)
        self._worker.join()
        for sink in self.lifecycle.sinks:
            sink.close()
        if self._backend is not None:
            self._backend.close()

    def _wait(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    def _expire_loop(self) -> None:
        while not self._stop.wait(self._expiry_interval_s):
            with self._lock:
                expired = self._assembler.expire()  # never raises for one bad study: it comes out failed
            for study in expired:
                self._studies.put(study)

    def _process_loop(self) -> None:
        while (study := self._studies.get()) is not None:
            try:
                finished = self.lifecycle.finish(study)
            except Exception as exc:  # noqa: BLE001 - surfaced: the gateway answers 0xA700 from now on
                log.exception("the pipeline thread failed; refusing new instances")
                self._failure = type(exc).__name__
                continue  # the study stays spooled: a restart replays it
            finally:
                self._record_in_flight()
            if finished.outcome is Outcome.ABANDONED:
                continue
            for _, _, seq in study.sources:
                path = self._spool / self._name(seq)
                try:
                    if finished.outcome is Outcome.PUBLISHED:
                        path.unlink(missing_ok=True)
                    elif path.exists():
                        os.replace(path, self._rejected / path.name)
                except OSError:
                    log.exception("cannot clear a spooled instance; a restart would replay it (idempotent)")
            if finished.outcome is Outcome.PUBLISHED:
                log.info("a %s study triaged: %s", study.modality, finished.result.event.priority)


def main(args) -> int:
    """`oncostream gateway --port P [--ae-title T] (--bootstrap HOST:PORT | --out DIR) [--allow AE ...]
    [--host ADDRESS] [--metrics-port P]`."""
    from oncostream import metrics
    from oncostream.transport_security import dicom_server_tls

    settings = Settings()
    tls = dicom_server_tls(settings)  # before anything starts: unreadable certificates stop here
    if args.bootstrap:
        try:
            destination: Destination = KafkaDestination(settings, args.bootstrap)
        except GatewayError as exc:
            log.error("%s", exc)
            return 2
        where = f"Kafka {args.bootstrap} topic {settings.topic_dicom}"
    else:
        destination = PipelineDestination(settings, args.out)
        where = f"the embedded pipeline, outputs in {args.out}"
    gateway = Gateway(destination, ae_title=args.ae_title, allow=args.allow,
                      max_instance_bytes=settings.max_instance_bytes)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    port = gateway.start(args.port, host=args.host, ssl_context=tls)
    if not args.allow:
        log.warning("no --allow given: any calling AE title may store")
    served = "" if args.metrics_port is None else f"; metrics on port {metrics.serve(args.metrics_port)}"
    # tests and operators read this line to learn the ports when 0 was given
    secured = ""
    if tls is not None:
        secured = " over DICOM TLS" + (", client certificates required" if settings.dicom_tls_require_client_cert
                                       else "")
    print(f"gateway {args.ae_title} listening on port {port}, feeding {where}{secured}{served}", flush=True)
    try:
        while not stop.wait(0.5):  # a bounded wait lets the signal handler run on this thread
            pass
    finally:
        log.info("stopping: no new associations; finishing complete studies")
        gateway.stop()
        destination.close()
    return 0
