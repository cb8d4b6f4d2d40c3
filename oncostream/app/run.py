"""`oncostream run`: the study lifecycle over a directory of DICOM, outputs under --out.

Nothing to acknowledge: every study ends triaged in `triage.jsonl` or in `rejected.jsonl` with a reason
(a failed study: one line per instance, naming its file). Exit 1 when a study could not be finished
(the backend or the rejection log stayed unavailable), after printing what was finished.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ingest.base import SourceMessage
from oncostream import metrics
from oncostream.app.lifecycle import ConcurrentStudies, Outcome, RejectionLog, StudyLifecycle, validate
from oncostream.contracts import LungRadsCategory, TriageEvent
from oncostream.errors import DeadLetterUnavailable, NotScreened, ProcessFault, RejectedInstance
from oncostream.settings import Settings

log = logging.getLogger(__name__)

PRIORITY_ORDER = {"URGENT": 0, "HIGH": 1, "ROUTINE": 2, "LOW": 3}
# how long `run` keeps backing off before it gives a study up (a one-shot command must end)
_RUN_PATIENCE_S = 300.0


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


class _Patience:
    """The `wait` of a one-shot command: sleep, until the total waited passes the patience."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.waited = 0.0

    def __call__(self, seconds: float) -> bool:
        if self.waited + seconds > self.limit_s:
            return False
        time.sleep(seconds)
        self.waited += seconds
        return True


def main_run(args) -> int:
    """`oncostream run [PATH] [--out DIR] [--metrics-port P] [--triton HOST:PORT]`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ingest.assembly import Assembler, assembly_key
    from ingest.directory import DirectorySource
    from oncostream.app.pipeline import Pipeline, delivery_sinks, make_backend
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

    # paths only: each file is read when its turn comes, so memory follows the studies in assembly,
    # not the size of the folder
    files = DirectorySource(path).paths()
    try:
        # a source is ("run", 0, index of the file): a failed study's rejection lines name each file
        rejections = RejectionLog(out / "rejected.jsonl", origin_of=lambda source: str(files[source[2]]))
    except DeadLetterUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    backend = make_backend(settings)
    assembler = Assembler(settings)
    lifecycle = StudyLifecycle(settings, Pipeline(settings, backend), [FileSink(out), *delivery_sinks(settings, files_dir=out)],
                               rejections, _Patience(_RUN_PATIENCE_S), assembler=assembler)
    # studies are processed on their own threads while the next files are read; with every thread busy,
    # reading waits (backpressure), so memory follows max_studies_processing, not the folder
    processing = ConcurrentStudies(lifecycle, settings.max_studies_processing,
                                   pixel_budget=settings.max_processing_pixel_bytes)
    events: list[TriageEvent] = []  # what the worklist shows; the DICOM outputs are already on disk
    unfinished = 0
    started = time.monotonic()

    def ended(finished_studies) -> None:
        nonlocal unfinished
        for study, finished in finished_studies:
            progress.update(task, description=f"{study.modality} study")
            if finished.outcome is Outcome.PUBLISHED:
                events.append(finished.result.event)
            elif finished.outcome is Outcome.ABANDONED:
                unfinished += 1

    def finish(studies) -> None:
        for study in studies:
            ended(processing.finish(study))
        ended(processing.collect(timeout_s=0.0))

    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("reading", total=len(files))
            for index, file in enumerate(files):
                message = SourceMessage(data=file.read_bytes(), origin=str(file))
                metrics.record(metrics.INSTANCES.inc)
                metrics.record(metrics.INSTANCE_BYTES.inc, len(message.data))
                try:
                    ds, modality = validate(message.data, settings)
                    if processing.processing(assembly_key(ds, modality)):
                        log.info("ignoring %s: a late instance of a study already closed", message.origin)
                        studies = []
                    else:
                        studies = assembler.add(ds, source=("run", 0, index), modality=modality,
                                                nbytes=len(message.data))
                except NotScreened:
                    log.info("ignoring %s: no pipeline reads it", message.origin)
                    studies = []
                except RejectedInstance as exc:
                    log.warning("rejected %s: %s", message.origin, exc.reason)
                    rejections.add_instance(exc.reason, exc.detail, message.origin, exc.sop_instance_uid)
                    studies = []
                if not lifecycle.flush_dead_letter():
                    raise DeadLetterUnavailable(f"cannot write {rejections.path}")
                finish(studies)
                progress.advance(task)
            finish(assembler.flush_all())
            ended(processing.drain())
            progress.update(task, description="done")
    except (DeadLetterUnavailable, ProcessFault) as exc:  # not the input's fault: a rerun reads it again
        console.print(f"[red]stopped: {exc}[/red]")
        unfinished += 1
    finally:
        processing.close()
        for sink in lifecycle.sinks:
            sink.close()
        backend.close()

    table = Table(title=f"oncostream worklist ({len(events)} studies, {time.monotonic() - started:.1f} s)")
    for column in ("study", "modality", "priority", "category", "top finding", "latency"):
        table.add_column(column)
    for event in sorted(events, key=lambda e: (PRIORITY_ORDER[e.priority], e.study_instance_uid)):
        flags = (" (review)" if event.needs_human_review else "") + (" (incomplete)" if event.incomplete else "")
        latency = (event.triaged_at - event.arrived_at).total_seconds()
        table.add_row("…" + event.study_instance_uid[-12:], event.modality, event.priority + flags,
                      describe_category(event), describe_top_finding(event), f"{latency:.1f} s")
    console.print(table)
    console.print(f"outputs: {out / 'triage.jsonl'}, {out / 'sr'}, {out / 'seg'}"
                  + (f"; {rejections.count} rejected (see {rejections.path})" if rejections.count else ""))
    if unfinished:
        console.print(f"[red]{unfinished} studies could not be finished (see the log); run again to retry[/red]")
        return 1
    return 0
