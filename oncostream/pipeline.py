"""Pipeline composition: assembled study -> backend -> postprocess -> sinks, and `oncostream run`."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from oncostream import metrics
from oncostream.contracts import LungRadsCategory, TriageEvent
from oncostream.errors import BackendUnavailable, OncostreamError, RejectedInstance, StudyFailed
from oncostream.settings import Settings
from oncostream.study import Study, StudyResult

log = logging.getLogger(__name__)

PRIORITY_ORDER = {"URGENT": 0, "HIGH": 1, "ROUTINE": 2, "LOW": 3}


def make_backend(settings: Settings):
    """The configured InferenceBackend: embedded (default) or Triton over gRPC."""
    if settings.backend == "triton":
        from ingest.backends.triton import TritonBackend

        return TritonBackend(settings)
    from ingest.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.model_repository)


def delivery_sinks(settings: Settings) -> list:
    """PACS delivery configured in the settings: C-STORE SCU and/or DICOMweb STOW-RS."""
    sinks = []
    if settings.pacs_address:
        from postprocess.pacs_sink import PacsSink

        sinks.append(PacsSink.from_address(settings.pacs_address, called_ae=settings.pacs_called_ae))
    if settings.stow_rs_url:
        from postprocess.stow_sink import StowRsSink

        password = settings.stow_rs_password.get_secret_value() if settings.stow_rs_password else None
        sinks.append(StowRsSink(settings.stow_rs_url, username=settings.stow_rs_username, password=password))
    return sinks


class Pipeline:
    """Processes one assembled study at a time; a failing study raises StudyFailed and fails alone."""

    def __init__(self, settings: Settings, backend):
        self.settings = settings
        self.backend = backend

    def process(self, study: Study) -> StudyResult:
        from postprocess.results import build_result

        kind = "ldct" if study.modality == "CT" else "mammo"
        try:
            with metrics.timed(metrics.INFERENCE_SECONDS, model=f"{kind}_screening"):
                if study.modality == "CT":
                    from ingest.ldct import infer_ldct_study

                    inference = infer_ldct_study(self.backend, study)
                else:
                    from ingest.mammo import infer_mammo_study

                    inference = infer_mammo_study(self.backend, study, repository=self.settings.model_repository)
            return build_result(study, inference, self.settings)
        except (BackendUnavailable, StudyFailed):
            raise
        except OncostreamError as exc:
            raise StudyFailed("processing_failed", str(exc), study.study_instance_uid) from exc
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            log.exception("study %s failed", study.study_instance_uid)
            raise StudyFailed("processing_failed", f"{type(exc).__name__}: {exc}", study.study_instance_uid) from exc


def record_published(result: StudyResult) -> None:
    """Metrics once a study's outputs are durably published."""
    event = result.event
    outcome = "incomplete" if event.incomplete else "triaged"
    latency = (event.triaged_at - event.arrived_at).total_seconds()
    metrics.record(lambda: metrics.STUDIES.labels(modality=event.modality, outcome=outcome).inc())
    metrics.record(lambda: metrics.STUDY_LATENCY.labels(modality=event.modality).observe(max(latency, 0.0)))
    metrics.record(lambda: metrics.PRIORITY.labels(modality=event.modality, priority=event.priority).inc())


class RejectionLog:
    """The file-mode dead-letter sink: `rejected.jsonl`, one line per rejected instance or failed study."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0

    def add(self, reason: str, detail: str, origin: str, uid: str | None) -> None:
        self.count += 1
        metrics.record(lambda: metrics.DLQ.labels(reason=reason).inc())
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"reason": reason, "detail": detail, "origin": origin, "uid": uid,
                                "at": datetime.now(timezone.utc).isoformat()}) + "\n")


def describe_category(event: TriageEvent) -> str:
    category = event.category
    if isinstance(category, LungRadsCategory):
        return f"Lung-RADS {category.lung_rads}"
    return f"score {category.exam_score}, density {category.density}"


def describe_top_finding(event: TriageEvent) -> str:
    if not event.findings:
        return "-"
    if event.modality == "CT":
        top = max(event.findings, key=lambda f: (f.malignancy_probability, f.mean_diameter_mm))
        return f"{top.mean_diameter_mm:.1f} mm {top.composition}, p={top.malignancy_probability:.2f}"
    top = max(event.findings, key=lambda f: f.score)
    return f"{top.type} {top.laterality}{top.view} {top.score:.2f}"


def main_run(args) -> int:
    """`oncostream run [PATH] [--out DIR] [--metrics-port P] [--triton HOST:PORT]`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ingest.assembly import Assembler
    from ingest.decode import parse_instance, route
    from ingest.directory import DirectorySource
    from postprocess.errors import SinkError
    from postprocess.file_sink import FileSink

    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough that the worklist does not wrap
        console = Console(width=140)
    settings = Settings()
    if args.triton:
        settings = settings.model_copy(update={"backend": "triton", "triton_url": args.triton})
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.metrics_port is not None:
        port = metrics.serve(args.metrics_port)
        console.print(f"metrics: http://127.0.0.1:{port}/metrics")
    path = args.path
    if path is None:
        from oncostream.synth.command import write_studies

        path = out / "input"
        console.print(f"no input given: synthesising 3 mammography exams and 2 LDCT series ({args.size}) in {path}")
        started = time.monotonic()
        write_studies(path, mammo=3, ldct=2, seed=0, size=args.size)
        console.print(f"synthesised in {time.monotonic() - started:.1f} s")

    backend = make_backend(settings)
    pipeline = Pipeline(settings, backend)
    sinks = [FileSink(out), *delivery_sinks(settings)]
    rejections = RejectionLog(out / "rejected.jsonl")
    assembler = Assembler(settings)
    results: list[StudyResult] = []
    files = list(DirectorySource(path))
    started = time.monotonic()

    def finish(studies: list[Study]) -> None:
        for study in studies:
            progress.update(task, description=f"{study.modality} study …{study.study_instance_uid[-8:]}")
            try:
                result = pipeline.process(study)
            except StudyFailed as exc:
                metrics.record(lambda: metrics.STUDIES.labels(modality=study.modality, outcome="failed").inc())
                rejections.add(exc.reason, exc.detail, "study", study.study_instance_uid)
                continue
            try:
                for sink in sinks:
                    sink.add(result)
                for sink in sinks:
                    sink.flush()
            except SinkError as exc:
                metrics.record(lambda: metrics.STUDIES.labels(modality=study.modality, outcome="failed").inc())
                rejections.add("delivery_failed", str(exc), "study", study.study_instance_uid)
                continue
            record_published(result)
            results.append(result)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("reading", total=len(files))
        for message in files:
            metrics.record(metrics.INSTANCES.inc)
            metrics.record(metrics.INSTANCE_BYTES.inc, len(message.data))
            try:
                ds = parse_instance(message.data, max_bytes=settings.max_instance_bytes)
                modality = route(ds)
            except RejectedInstance as exc:
                log.warning("rejected %s: %s", exc.sop_instance_uid or "instance", exc)
                rejections.add(exc.reason, exc.detail, message.origin, exc.sop_instance_uid)
                progress.advance(task)
                continue
            finish(assembler.add(ds, modality=modality))
            progress.advance(task)
        finish(assembler.flush_all())
        progress.update(task, description="done")
    for sink in sinks:
        sink.close()
    backend.close()

    table = Table(title=f"oncostream worklist ({len(results)} studies, {time.monotonic() - started:.1f} s)")
    for column in ("study", "modality", "priority", "category", "top finding", "latency"):
        table.add_column(column)
    for result in sorted(results, key=lambda r: (PRIORITY_ORDER[r.event.priority], r.event.study_instance_uid)):
        event = result.event
        flags = (" (review)" if event.needs_human_review else "") + (" (incomplete)" if event.incomplete else "")
        latency = (event.triaged_at - event.arrived_at).total_seconds()
        table.add_row("…" + event.study_instance_uid[-12:], event.modality, event.priority + flags,
                      describe_category(event), describe_top_finding(event), f"{latency:.1f} s")
    console.print(table)
    console.print(f"outputs: {out / 'triage.jsonl'}, {out / 'sr'}, {out / 'seg'}"
                  + (f"; {rejections.count} rejected (see {rejections.path})" if rejections.count else ""))
    return 0
