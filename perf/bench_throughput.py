"""Throughput, latency and memory of every way to serve the models, on the same synthetic studies in one run.

    .venv/bin/python -m perf.bench_throughput            # the full benchmark (`make bench`), about 25 min
    .venv/bin/python -m perf.bench_throughput --quick    # 3 studies, no services (`make bench QUICK=1`)

Paths, each on the same studies (`--mammo`/`--ldct`, `--size small`, `--seed`):

- naive: perf/naive_script.py, the sequential script a user would write (pydicom, NumPy preprocessing, ONNX
  Runtime at batch 1, a plain SR);
- ceiling: the same models in ONNX Runtime on the very tensors the served pipeline fed them, recorded in
  memory beforehand: model-only throughput, the limit of this machine for this work;
- embedded: `oncostream run DIR` (the directory source, the study lifecycle, ConcurrentStudies), for each
  `--processing` value of ONCOSTREAM_MAX_STUDIES_PROCESSING;
- Kafka: `oncostream produce` -> 1 and 2 `oncostream worker` processes on a 6-partition topic -> triage topic;
- Triton: `oncostream run DIR --triton` against the CPU model repository in the pytriton wheel's tritonserver.

Throughput is studies / (last triaged_at - first arrived_at) from the TriageEvents themselves (model loading and
process start are outside the window); latency is triaged_at - arrived_at per study; peak RSS is the child
process's own high-water mark (wait4). Then: peak RSS at 10 and 100 studies, open-loop Poisson arrivals into
Kafka, cost against work size, a 2 GB folder of full-size studies through `oncostream run` (peak RSS against the
folder's size), and a GPU projection. Last, the paths behind the ratios (naive, ceiling, embedded, 1 Kafka
worker on a backlog) run again, back to back, for `--rounds` rounds in all: the summary gives each ratio's median
over the rounds and every round's value, since other work on the shared cores moves single runs by 10-20 %. Each
part writes its section of perf/RESULTS.md (or of `--results FILE`), opened by a summary of the four target
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from oncostream.memory import restart_with_hugepages, without_hugepages
from perf.results import RESULTS, write_section

ONCOSTREAM = str(Path(sys.executable).with_name("oncostream"))
REPO = Path(__file__).resolve().parent.parent
# published TensorRT speed-up used by the GPU projection (see the section's text for the source)
TENSORRT_SPEEDUPS = (10.0, 40.0)
SECTION = "Throughput, latency and memory (perf/bench_throughput.py)"
# open-loop rates, as fractions of the 1-worker closed-loop throughput (which the producer's burst, sharing
# the cores, holds below the worker's capacity: 1.25 was still kept up with on 2026-11-30)
OPEN_LOOP_FRACTIONS = (0.5, 1.0, 1.5, 2.0, 3.0)
QUICK = True  # perf/run_all.py --quick runs this module with --quick


def urgent_sla_s(program: str = "default") -> float:
    """The URGENT triage SLA in seconds, from its one definition: ``triage_sla_seconds`` of the program's
    policy (postprocess/programs/<program>.yaml, the target the burn-rate alerts page on)."""
    from postprocess.priority import load_program

    return float(load_program(program).triage_sla_seconds["URGENT"])


# ------------------------------------------------------------------------------------------------ measurements

@dataclass
class Measured:
    path: str
    studies: int
    instances: int
    nbytes: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    note: str = ""

    @property
    def studies_per_s(self) -> float:
        return self.studies / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> str:
        lat = np.percentile(self.latencies, [50, 95, 99]) if self.latencies else [float("nan")] * 3
        rss = f"{self.peak_rss_mb:.0f}" if self.peak_rss_mb is not None else "-"
        return (f"| {self.path} | {self.studies} | {self.instances} | {self.nbytes / 1e6:.1f} | {self.seconds:.2f} | "
                f"{self.studies_per_s:.3f} | {self.instances / self.seconds:.1f} | "
                f"{self.nbytes / 1e6 / self.seconds:.2f} | {lat[0]:.2f} | {lat[1]:.2f} | {lat[2]:.2f} | {rss} |")


HEADER = ("| path | studies | instances | MB | seconds | studies/s | instances/s | MB/s | p50 s | p95 s | p99 s "
          "| peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _files(data: Path) -> list[Path]:
    from ingest.directory import DirectorySource

    return DirectorySource(data).paths()


def _corpus_size(data: Path) -> tuple[int, int]:
    files = _files(data)
    return len(files), sum(p.stat().st_size for p in files)


def _child(command: list[str], env: dict[str, str], log: Path, timeout_s: float = 3600) -> tuple[int, float]:
    """Run a child to its end: (exit status, peak RSS in MB of that child alone)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return _reap(proc, timeout_s)


def _high_water_mb(pid: int) -> float | None:
    """VmHWM of a live process: its own peak resident set since exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def _reap(proc: subprocess.Popen, timeout_s: float) -> tuple[int, float]:
    """Wait for a child: (exit status, its peak RSS in MB). The peak is the child's VmHWM, read every 0.1 s
    while it runs (wait4's ru_maxrss is no use here: Linux carries the parent's resident size across
    fork and exec into it)."""
    deadline = time.monotonic() + timeout_s
    peak = 0.0
    while True:
        if proc.poll() is not None:
            return proc.returncode, peak
        peak = max(peak, _high_water_mb(proc.pid) or 0.0)
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.1)


def _events(lines) -> tuple[float, list[float]]:
    """(seconds from the first arrival to the last triage, per-study latencies) of TriageEvent JSON lines."""
    arrived, triaged = [], []
    for line in lines:
        event = json.loads(line) if isinstance(line, (str, bytes)) else line
        arrived.append(datetime.fromisoformat(event["arrived_at"]).timestamp())
        triaged.append(datetime.fromisoformat(event["triaged_at"]).timestamp())
    if not arrived:
        return float("nan"), []
    return max(triaged) - min(arrived), [t - a for a, t in zip(arrived, triaged)]


def naive(data: Path, work: Path, same_work: bool = False) -> Measured:
    out = work / ("naive-same-work-out" if same_work else "naive-out")
    # the script a user would write runs as a plain Python process: without oncostream's allocator tunable
    status, rss = _child([sys.executable, "-m", "perf.naive_script", str(data), str(out),
                          *(["--same-work"] if same_work else [])], without_hugepages(), work / "naive.log")
    if status != 0:
        raise RuntimeError(f"naive script failed: {(work / 'naive.log').read_text()[-2000:]}")
    rows = [json.loads(line) for line in (out / "naive.jsonl").read_text().splitlines()]
    start = min(r["started"] for r in rows)
    instances, nbytes = _corpus_size(data)
    label = ("naive script, the same model work (look-back candidates segmented too)" if same_work
             else "naive script (pydicom, NumPy, ORT batch 1, sequential)")
    return Measured(label, len(rows), instances, nbytes, max(r["finished"] for r in rows) - start,
                    [r["finished"] - r["arrived"] for r in rows], rss)


def embedded(data: Path, work: Path, processing: int, label: str | None = None,
             extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Measured:
    out = work / f"run-{processing}-{len(list(work.glob('run-*')))}"
    env = {**os.environ, "ONCOSTREAM_MAX_STUDIES_PROCESSING": str(processing), **(env or {})}
    log = out.with_suffix(".log")
    status, rss = _child([ONCOSTREAM, "run", str(data), "--out", str(out), *extra], env, log)
    if status != 0:
        raise RuntimeError(f"oncostream run failed ({status}): {log.read_text()[-3000:]}")
    seconds, latencies = _events((out / "triage.jsonl").read_text().splitlines())
    instances, nbytes = _corpus_size(data)
    return Measured(label or f"embedded `oncostream run`, {processing} studies processing", len(latencies),
                    instances, nbytes, seconds, latencies, rss)


@dataclass
class StageTimes:
    """Per study: total Pipeline.process seconds, seconds inside model runs, and pixel decoding seconds."""

    modality: str
    total: float
    models: float
    decode: float


def profile_stages(data: Path) -> tuple[list[StageTimes], list[tuple[str, dict]], str]:
    """Every study through the served Pipeline, one at a time, in this process: its stage times, every
    model call's feeds (for the ceiling), and a cProfile summary (functions by their own time)."""
    import cProfile
    import io
    import pstats

    from ingest.assembly import Assembler
    from ingest.backends.embedded import EmbeddedBackend
    from ingest.decode import decode_pixels
    from oncostream.app.lifecycle import validate
    from oncostream.app.pipeline import Pipeline
    from oncostream.settings import Settings

    class Recording(EmbeddedBackend):
        def __init__(self):
            # one model run at a time (every core on it): the model seconds are wall seconds, not the
            # summed time of runs side by side
            super().__init__(intra_op_threads=0)
            self.calls: list[tuple[str, dict]] = []
            self.seconds = 0.0

        def run_model(self, name, feeds):
            self.calls.append((name, {k: np.array(v, copy=True) for k, v in feeds.items()}))
            started = time.perf_counter()
            try:
                return super().run_model(name, feeds)
            finally:
                self.seconds += time.perf_counter() - started

    settings = Settings()
    backend = Recording()
    pipeline = Pipeline(settings, backend)
    assembler = Assembler(settings)
    studies = []
    for path in _files(data):
        ds, modality = validate(path.read_bytes(), settings)
        studies.extend(assembler.add(ds, modality=modality))
    studies.extend(assembler.flush_all())
    # warm-up, as a serving process has had: the first study of each modality loads code tables and
    # allocates arenas once per process
    for modality in {study.modality for study in studies}:
        pipeline.process(next(study for study in studies if study.modality == modality))
    backend.calls.clear()
    backend.seconds = 0.0
    times = []
    profiler = cProfile.Profile()
    for study in studies:
        started = time.perf_counter()
        for ds in study.datasets:
            decode_pixels(ds)
        decode = time.perf_counter() - started
        before, started = backend.seconds, time.perf_counter()
        profiler.enable()
        pipeline.process(study)
        profiler.disable()
        times.append(StageTimes(study.modality, time.perf_counter() - started, backend.seconds - before, decode))
    calls = backend.calls
    backend.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    rows = [line for line in text.getvalue().splitlines() if re.match(r"\s*\d", line)]
    return times, calls, "\n".join(rows)


def ceiling(calls: list[tuple[str, dict]], studies: int, instances: int, nbytes: int) -> Measured:
    """The recorded model calls back to back, both ways ONNX Runtime can use this machine's cores: every
    core on each run, one run at a time, and one thread per run with as many runs side by side as cores
    (EmbeddedBackend.run_all over all the calls). The faster is the ceiling; the note has both."""
    from functools import partial

    from ingest.backends.embedded import EmbeddedBackend

    seconds = {}
    for threads in (0, 1):
        backend = EmbeddedBackend(intra_op_threads=threads)
        backend.run_model(*calls[0])  # warm-up: session arenas, as the served path has had
        started = time.perf_counter()
        backend.run_all([partial(backend.run_model, name, feeds) for name, feeds in calls])
        seconds[threads] = time.perf_counter() - started
        backend.close()
    return Measured("model-only ceiling (same models, ORT, tensors in memory)", studies, instances, nbytes,
                    min(seconds.values()),
                    note=(f"{len(calls)} model calls: {seconds[0]:.2f} s with every core per run, one run at a time; "
                          f"{seconds[1]:.2f} s with one thread per run, runs side by side"))


# ------------------------------------------------------------------------------------------------ Kafka

class Topics:
    def __init__(self, bootstrap: str, work: Path, partitions: int = 6):
        from oncostream.services.kafka import create_topics
        from oncostream.settings import Settings

        stem = f"bench-{os.getpid()}-{time.monotonic_ns()}"
        self.bootstrap = bootstrap
        self.settings = Settings(kafka_bootstrap=bootstrap, topic_dicom=f"{stem}.dicom",
                                 topic_triage=f"{stem}.triage", topic_results=f"{stem}.results",
                                 topic_dlq=f"{stem}.dlq", consumer_group=f"{stem}-workers",
                                 claim_check_dir=work / "claims")
        create_topics(bootstrap, {self.settings.topic_dicom: partitions, self.settings.topic_triage: 1,
                                  self.settings.topic_results: 1, self.settings.topic_dlq: 1})
        self.env = {**os.environ, "ONCOSTREAM_TOPIC_TRIAGE": self.settings.topic_triage,
                    "ONCOSTREAM_TOPIC_RESULTS": self.settings.topic_results,
                    "ONCOSTREAM_TOPIC_DLQ": self.settings.topic_dlq,
                    "ONCOSTREAM_CONSUMER_GROUP": self.settings.consumer_group,
                    "ONCOSTREAM_CLAIM_CHECK_DIR": str(self.settings.claim_check_dir)}

    def workers(self, count: int, work: Path) -> list[tuple[subprocess.Popen, Path]]:
        started = []
        for k in range(count):
            log = work / f"worker-{self.settings.consumer_group}-{k}.log"
            with log.open("wb") as out:
                started.append((subprocess.Popen([ONCOSTREAM, "worker", "--bootstrap", self.bootstrap, "--topic",
                                                  self.settings.topic_dicom], env=self.env, stdout=out,
                                                 stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + 300
        want = 6 // count
        while True:  # every member holds its share of the partitions before anything is produced
            counts = []
            for proc, log in started:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
                lines = [x for x in log.read_text(errors="replace").splitlines() if "partitions assigned:" in x]
                counts.append(lines[-1].count("(") if lines else 0)
            if counts == [want] * count:
                return started
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not settle on their partitions: {counts}")
            time.sleep(0.2)

    def triage_events(self, expected: int, timeout_s: float) -> list[dict]:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(self.settings.topic_triage, bootstrap_servers=self.bootstrap,
                                 auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
        events: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(events) < expected and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        event = json.loads(record.value)
                        events.setdefault(event["study_instance_uid"], event)
        finally:
            consumer.close()
        return list(events.values())


def _stop(workers: list[tuple[subprocess.Popen, Path]]) -> float:
    """SIGTERM every worker; the largest peak RSS among them (MB)."""
    peaks = []
    for proc, _log in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _log in workers:
        peaks.append(_reap(proc, 120)[1])
    return max(peaks)


def kafka_path(data: Path, bootstrap: str, work: Path, count: int, backlog: bool = False) -> Measured:
    """``count`` workers on 6 partitions. Closed loop (default): the workers hold their partitions, then the
    folder is produced while they run (the producer shares this machine's cores), timed from the first
    record's broker timestamp. ``backlog``: the folder is produced first and the workers started on it, timed
    from when every worker held its partitions (to within the 0.2 s its log is read at), as `oncostream run`
    meets a folder: what the workers sustain when producers run elsewhere."""
    from oncostream.streaming import produce_files

    topics = Topics(bootstrap, work)
    files = _files(data)
    if backlog:
        report = produce_files(files, topics.settings, bootstrap)
    workers = topics.workers(count, work)
    started = time.time() - 0.2
    try:
        if not backlog:
            report = produce_files(files, topics.settings, bootstrap)
        events = topics.triage_events(report.studies, timeout_s=1800)
    finally:
        rss = _stop(workers)
    if len(events) < report.studies:
        raise TimeoutError(f"only {len(events)} of {report.studies} triage events arrived")
    seconds, latencies = _events(events)
    label = f"Kafka: produce -> {count} worker{'s' if count > 1 else ''} (6 partitions) -> triage topic"
    if backlog:
        triaged = [datetime.fromisoformat(e["triaged_at"]).timestamp() for e in events]
        seconds = max(triaged) - started
        latencies = [t - started for t in triaged]
        label = (f"Kafka: {count} worker{'s' if count > 1 else ''} (6 partitions) on a produced backlog "
                 "-> triage topic")
    return Measured(label, len(events), report.instances, report.bytes, seconds, latencies, rss,
                    note="peak RSS: the largest worker")


def open_loop(studies: list[list[Path]], bootstrap: str, work: Path, rate: float, duration_s: float,
              seed: int) -> dict:
    """Poisson arrivals of whole studies at ``rate`` studies/s for ``duration_s`` into a fresh topic, one
    worker: offered and achieved rates, latency percentiles."""
    from oncostream.streaming import make_producer, produce_files

    rng = np.random.default_rng(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.exponential(1.0 / rate)
        if t > duration_s or len(arrivals) == len(studies):
            break
        arrivals.append(t)
    topics = Topics(bootstrap, work)
    workers = topics.workers(1, work)
    producer = make_producer(bootstrap, client_id="bench-open-loop")
    try:
        started = time.monotonic()
        for at, files in zip(arrivals, studies):
            time.sleep(max(0.0, started + at - time.monotonic()))
            produce_files(files, topics.settings, bootstrap, producer=producer)
        events = topics.triage_events(len(arrivals), timeout_s=900)
    finally:
        producer.close()
        _stop(workers)
    seconds, latencies = _events(events)
    p = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"rate": rate, "offered": len(arrivals), "triaged": len(events), "window_s": seconds,
            "achieved": len(events) / seconds if seconds else 0.0, "p50": p[0], "p95": p[1], "p99": p[2]}


# ------------------------------------------------------------------------------------------------ size sweep

def _process_seconds(pipeline, backend_seconds, study) -> tuple[float, float]:
    before, started = backend_seconds(), time.perf_counter()
    pipeline.process(study)
    return time.perf_counter() - started, backend_seconds() - before


def size_sweep(seed: int, slices: list[int], mammo_rows: list[int]) -> list[tuple[str, int, float, float, float]]:
    """(kind, size, megapixels, seconds, model seconds) of one study per size through the served Pipeline.

    LDCT: one full-size series (512x512, 1.25 mm), cut to or repeated up to N slices. Mammography: one
    full-size exam (2048 rows, 0.1 mm) resampled to N rows with the pixel spacing scaled to match."""
    import copy

    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from scipy import ndimage

    from ingest.assembly import Assembler
    from ingest.backends.embedded import EmbeddedBackend
    from ingest.decode import decode_pixels
    from oncostream.app.pipeline import Pipeline
    from oncostream.settings import Settings
    from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
    from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets

    class Timed(EmbeddedBackend):
        seconds = 0.0

        def run_model(self, name, feeds):
            started = time.perf_counter()
            try:
                return super().run_model(name, feeds)
            finally:
                Timed.seconds += time.perf_counter() - started

    settings = Settings()
    backend = Timed()
    pipeline = Pipeline(settings, backend)

    def study_of(datasets, modality):
        assembler = Assembler(settings)
        studies = []
        for ds in datasets:
            studies.extend(assembler.add(ds, modality=modality))
        [study] = studies + assembler.flush_all()
        return study

    rows = []
    series = ldct_datasets(make_ldct_phantom(seed, "full"))
    step = float(series[1].ImagePositionPatient[2]) - float(series[0].ImagePositionPatient[2])
    for n in slices:
        study_uid, series_uid = generate_uid(), generate_uid()
        datasets = []
        for k in range(n):
            ds = copy.deepcopy(series[k % len(series)])
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber, ds.ImagesInAcquisition = k + 1, n
            position = [float(v) for v in series[0].ImagePositionPatient]
            ds.ImagePositionPatient = [position[0], position[1], round(position[2] + k * step, 3)]
            datasets.append(ds)
        study = study_of(datasets, "CT")
        seconds, models = _process_seconds(pipeline, lambda: Timed.seconds, study)
        rows.append(("LDCT slices (512x512)", n, n * 512 * 512 / 1e6, seconds, models))
        del datasets, study
    exam = mammo_datasets(make_mammo_phantom(seed, "full"))
    for target in mammo_rows:
        study_uid = generate_uid()
        datasets = []
        for view in exam:
            ds = copy.deepcopy(view)
            pixels = decode_pixels(view)
            factor = target / pixels.shape[0]
            resized = ndimage.zoom(pixels.astype(np.float32), factor, order=1)
            resized = np.clip(np.rint(resized), 0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)
            ds.Rows, ds.Columns = resized.shape
            ds.PixelData = resized.tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            for name in ("PixelSpacing", "ImagerPixelSpacing"):
                if name in ds:
                    ds[name].value = [round(float(v) / factor, 6) for v in ds[name].value]
            ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            datasets.append(ds)
        study = study_of(datasets, "MG")
        megapixels = sum(int(d.Rows) * int(d.Columns) for d in datasets) / 1e6
        seconds, models = _process_seconds(pipeline, lambda: Timed.seconds, study)
        rows.append(("mammography exam rows (4 views)", target, megapixels, seconds, models))
    backend.close()
    return rows


# ------------------------------------------------------------------------------------------------ report

def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _projection(stages: list[StageTimes], processing: int) -> str:
    """Projected GPU throughput from measured CPU stage times and published TensorRT speed-ups."""
    total = sum(s.total for s in stages)
    models = sum(s.models for s in stages)
    cpu = total - models  # decode, canonicalise, preprocess, SR/SEG: stays on the CPU (DALI GPU aside)
    lines = ["| TensorRT speed-up on model time (assumed) | GPU busy s per study | CPU s per study | "
             "serial studies/s | overlapped studies/s | GPU utilisation serial | GPU utilisation overlapped |",
             "|---|---|---|---|---|---|---|"]
    n = len(stages)
    for speedup in TENSORRT_SPEEDUPS:
        gpu = models / speedup / n
        host = cpu / n
        serial = 1.0 / (gpu + host)
        # overlapped: the slower of the GPU and the CPU (host work spread over the cores this machine has)
        overlapped = 1.0 / max(gpu, host / min(processing, os.cpu_count() or 1))
        lines.append(f"| {speedup:.0f}x | {gpu:.3f} | {host:.3f} | {serial:.2f} | {overlapped:.2f} | "
                     f"{gpu * serial:.0%} | {min(1.0, gpu * overlapped):.0%} |")
    return "\n".join(lines)


@dataclass
class Report:
    """What one run measured so far; ``write`` renders it into perf/RESULTS.md after every part, so a part
    that fails later loses nothing measured before it."""

    command: str
    corpus: str
    sla: float
    results_path: Path | None
    load_start: str
    paths: list[Measured] = field(default_factory=list)
    best_k: int | None = None
    embedded_best: Measured | None = None
    ceiling: Measured | None = None
    naive: Measured | None = None
    naive_same_work: Measured | None = None
    workers: dict[int, Measured] = field(default_factory=dict)  # closed loop
    backlog: dict[int, Measured] = field(default_factory=dict)  # workers started on a produced backlog
    rss: list[tuple[str, str, Measured]] = field(default_factory=list)
    loop: list[dict] = field(default_factory=list)
    sweep: list[tuple] = field(default_factory=list)
    stages: list[StageTimes] = field(default_factory=list)
    profile: str = ""
    pending: str = ""
    big_folder: Measured | None = None
    # later rounds of the paths behind the ratios (repeat_round), measured after everything above
    repeats: list[Report] = field(default_factory=list)

    def ratios(self) -> list[tuple[str, str, float, str, str]]:
        rows = []
        if self.embedded_best and self.ceiling:
            rows.append(("pipeline efficiency", "embedded studies/s / model-only ceiling studies/s",
                         _ratio(self.embedded_best.studies_per_s, self.ceiling.studies_per_s), ">= 0.85", "paths"))
        if self.embedded_best and self.naive:
            rows.append(("speedup over the naive script", "embedded studies/s / naive script studies/s",
                         _ratio(self.embedded_best.studies_per_s, self.naive.studies_per_s), ">= 1.5", "paths"))
        if self.embedded_best and self.naive_same_work:
            rows.append(("speedup over the naive script, the same model work", "embedded studies/s / naive "
                         "script studies/s when it segments the look-back candidates too",
                         _ratio(self.embedded_best.studies_per_s, self.naive_same_work.studies_per_s), ">= 1.5",
                         "paths"))
        if self.embedded_best and 1 in self.backlog:
            rows.append(("Kafka / embedded throughput", "1 worker on a produced backlog studies/s / embedded "
                         "studies/s (both read what is already there)",
                         _ratio(self.backlog[1].studies_per_s, self.embedded_best.studies_per_s), ">= 0.9",
                         "paths"))
        if self.embedded_best and 1 in self.workers:
            rows.append(("Kafka / embedded throughput, closed loop", "1 worker studies/s while the folder is "
                         "produced from the same 2 cores / embedded studies/s",
                         _ratio(self.workers[1].studies_per_s, self.embedded_best.studies_per_s), ">= 0.9",
                         "paths"))
        for runs, how in ((self.backlog, "on a produced backlog"), (self.workers, "closed loop")):
            if 1 in runs and 2 in runs:
                rows.append(("2 workers / 1 worker", f"studies/s, 6 partitions, {how}",
                             _ratio(runs[2].studies_per_s, runs[1].studies_per_s), ">= 1.6 where cores allow",
                             "paths"))
        for prefix, name in (("embedded", "embedded `oncostream run`"), ("Kafka", "Kafka, 1 worker")):
            peaks = {n: m.peak_rss_mb for n, label, m in self.rss if label.startswith(prefix)}
            if "10" in peaks and "100" in peaks:
                rows.append(("peak RSS 100 / 10 studies", f"{name}, peak RSS",
                             _ratio(peaks["100"], peaks["10"]), "<= 1.2", "peak RSS"))
        if self.big_folder and self.big_folder.peak_rss_mb is not None:
            rows.append((f"peak RSS / folder size, {self.big_folder.nbytes / 1e9:.1f} GB folder",
                         "embedded `oncostream run`, peak RSS bytes / DICOM bytes",
                         _ratio(self.big_folder.peak_rss_mb * 2**20, self.big_folder.nbytes),  # VmHWM is in KiB
                         "< 1 (a 2 GB folder in under 2 GB RSS)", "a 2 GB folder"))
        return rows

    def write(self) -> Path:
        load_now = _load()
        summary = ["| ratio | measured as | value | each round | target | section |", "|---|---|---|---|---|---|"]
        later = [{(name, how): value for name, how, value, *_ in again.ratios()} for again in self.repeats]
        for name, how, value, target, section in self.ratios():
            rounds = [value, *(each[name, how] for each in later if (name, how) in each)]
            summary.append(f"| {name} | {how} | {float(np.median(rounds)):.2f} | "
                           f"{' / '.join(f'{v:.2f}' for v in rounds)} | {target} | {section} |")
        write_section("Summary: the four target ratios (perf/bench_throughput.py)", self.command, "\n".join([
            f"From one run of `{self.command}`; load average (1/5/15 min) {self.load_start} at the start, "
            f"{load_now} when written. Other sessions share this machine's 2 cores, so absolute figures move "
            "between runs; the ratios come from the same run. The paths behind the first five ratios were "
            f"measured in {1 + len(self.repeats)} rounds in this run (the first with the rest of the benchmark, "
            "then each round's paths back to back): the value is the median of the rounds, each round's "
            "ratio beside it, so the spread shows how much the shared cores moved it. Targets are reported, "
            f"never asserted. The section \"{SECTION}\" below has the raw numbers and the profile behind "
            "each ratio.",
            *([f"", f"Not measured in this run: {self.pending}."] if self.pending else []), "", *summary]),
            self.results_path)
        body = [f"{self.corpus} Load average (1/5/15 min) {self.load_start} at the start, {load_now} when "
                "written: other sessions share these 2 cores, so read ratios more than absolutes.", "",
                "### paths", "", HEADER, *(m.row() for m in self.paths), "",
                f"Studies processing at once (ONCOSTREAM_MAX_STUDIES_PROCESSING) in the best embedded run: "
                f"{self.best_k}. Throughput counts from the first arrival to the last triage event (process start "
                "and model loading are outside; first-call warm-up is inside, for every path). The naive script "
                "reads the whole folder before its first study, so its latency counts from each study's first "
                "file read; `run` reads files while studies are processing, so a study's latency starts when its "
                "first file is read; a Kafka study's latency starts at its first record's broker timestamp (on a "
                "produced backlog, where every study waited from the start, throughput and latency count from "
                "when every worker held its partitions: the producer ran before, as it would elsewhere). The "
                "ceiling has no latency: it is the recorded model calls back to back, the faster of two ways "
                f"({self.ceiling.note if self.ceiling else 'not measured'}). Peak RSS of the Kafka "
                "paths is the largest worker's."]
        if self.repeats:
            body += ["", "### the ratios' paths, every round (studies/s)", "",
                     "| round | naive script | naive script, same model work | model-only ceiling | embedded | "
                     "Kafka, 1 worker on a backlog |", "|---|---|---|---|---|---|"]
            for k, each in enumerate([self, *self.repeats], start=1):
                kafka = each.backlog.get(1)
                body.append(f"| {k} | {each.naive.studies_per_s:.3f} | {each.naive_same_work.studies_per_s:.3f} | "
                            f"{each.ceiling.studies_per_s:.3f} | {each.embedded_best.studies_per_s:.3f} | "
                            f"{kafka.studies_per_s if kafka else float('nan'):.3f} |")
        if self.rss:
            body += ["", "### peak RSS at 10 and 100 studies (small size: 6+4 and 60+40, seed + 1)", "",
                     "| studies | path | peak RSS MB | studies/s |", "|---|---|---|---|"]
            body += [f"| {n} | {label} | {m.peak_rss_mb:.0f} | {m.studies_per_s:.3f} |" for n, label, m in self.rss]
        if self.loop:
            body += ["", "### open-loop Poisson arrivals (1 worker, 6 partitions, 30 s per rate)", "",
                     f"URGENT SLA: p95 study latency <= {self.sla:.0f} s, read from its one definition, "
                     "`triage_sla_seconds` in postprocess/programs/default.yaml (`urgent_sla_s()`). Rates "
                     f"are fractions {OPEN_LOOP_FRACTIONS} of the 1-worker throughput measured above; studies are "
                     "drawn in order from the 100-study set.", "",
                     "| offered studies/s | studies sent | triaged | achieved studies/s | p50 s | p95 s | p99 s "
                     "| within SLA |", "|---|---|---|---|---|---|---|---|"]
            body += [f"| {r['rate']:.3f} | {r['offered']} | {r['triaged']} | {r['achieved']:.3f} | {r['p50']:.2f} | "
                     f"{r['p95']:.2f} | {r['p99']:.2f} | {'yes' if r['p95'] <= self.sla else 'no'} |"
                     for r in self.loop]
            within = [r["rate"] for r in self.loop if r["p95"] <= self.sla and r["triaged"] == r["offered"]]
            body += ["", f"Highest offered rate with p95 within the SLA: {max(within):.3f} studies/s." if within
                     else "No offered rate kept p95 within the SLA.",
                     "A 30 s window only shows the onset of saturation: above the worker's capacity the backlog, "
                     "and so latency, grows for as long as the rate lasts, so the sustainable rate is the highest "
                     "one whose achieved rate keeps up with the offered one."]
        if self.big_folder:
            m = self.big_folder
            body += ["", f"### a {m.nbytes / 1e9:.1f} GB folder (full size: {BIG_FOLDER_MAMMO} mammography exams + "
                     f"{BIG_FOLDER_LDCT} LDCT series, seed + 2)", "",
                     "`oncostream run` reads the folder lazily, a study at a time as it completes (DirectorySource); "
                     "peak RSS is the process's high-water mark (VmHWM).", "", HEADER, m.row(), "",
                     f"Peak RSS {m.peak_rss_mb:.0f} MB for {m.nbytes / 1e6:.0f} MB of DICOM: "
                     f"{'under' if m.peak_rss_mb * 1e6 < 2e9 else 'NOT under'} the 2 GB target."]
        if self.sweep:
            body += ["", "### cost against work size (one study at a time, embedded Pipeline.process)", "",
                     "LDCT: one full-size series (512x512, 1.25 mm) cut to, or repeated up to, N slices; "
                     "mammography: one full-size exam (2048 rows, 0.1 mm) resampled to N rows, pixel spacing "
                     "scaled to match.", "",
                     "| work | size | megapixels | seconds | model seconds | seconds per megapixel |",
                     "|---|---|---|---|---|---|"]
            body += [f"| {kind} | {size} | {mp:.1f} | {sec:.2f} | {ms:.2f} | {sec / mp:.3f} |"
                     for kind, size, mp, sec, ms in self.sweep]
        if self.stages:
            total = sum(st.total for st in self.stages)
            models = sum(st.models for st in self.stages)
            decode = sum(st.decode for st in self.stages)
            body += ["", "### per-stage CPU time and a GPU projection (a projection, not a measurement)", "",
                     f"Measured here, the same studies one at a time in this process after one warm-up study per "
                     f"modality: {total:.2f} s in Pipeline.process, of which {models:.2f} s inside ONNX Runtime "
                     f"({models / total:.0%}), and {decode:.2f} s to decode their pixels (measured separately).",
                     "", "Projection: model time divided by a published TensorRT speed-up (NVIDIA, \"How to Speed "
                     "Up Deep Learning Inference Using TensorRT\", developer.nvidia.com/blog/speed-up-inference-"
                     "tensorrt: \"up to 40x faster than CPU-only platforms\"; 10x as a conservative case), "
                     "everything else kept at its measured CPU time. Serial: one study at a time (the GPU idles "
                     f"while the CPU works); overlapped: {self.best_k} studies processing, limited by the GPU or by "
                     "the CPU work spread over this machine's cores. Not measured on any GPU: `python -m "
                     "perf.gpu_check` is the way to measure it.", "", _projection(self.stages, self.best_k or 1),
                     "", "cProfile of the same Pipeline.process calls, the 12 functions with the most time of "
                     "their own (ncalls, tottime, percall, cumtime, percall, function):", "", "```", self.profile,
                     "```"]
        return write_section(SECTION, self.command, "\n".join(body), self.results_path)


def repeat_round(report: Report, data: Path, work: Path, calls: list[tuple[str, dict]],
                 bootstrap: str | None) -> Report:
    """The paths behind the ratios once more, back to back, on the same studies: the naive script (both
    ways), the model-only ceiling on the recorded calls, `oncostream run` at the best number of studies
    processing and, with a broker, 1 worker on a produced backlog."""
    instances, nbytes = _corpus_size(data)
    again = Report(command=report.command, corpus=report.corpus, sla=report.sla, results_path=None, load_start="")
    again.naive = naive(data, work)
    again.naive_same_work = naive(data, work, same_work=True)
    again.ceiling = ceiling(calls, len(report.stages), instances, nbytes)
    again.best_k = report.best_k
    again.embedded_best = embedded(data, work, report.best_k)
    if bootstrap is not None:
        again.backlog[1] = kafka_path(data, bootstrap, work, 1, backlog=True)
    return again


# the "2 GB folder" of the issue: full-size studies, 27 MB per mammography exam, 84 MB per LDCT series
BIG_FOLDER_MAMMO = 50
BIG_FOLDER_LDCT = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perf.bench_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 small studies, no services, no sweeps")
    parser.add_argument("--mammo", type=int, default=None)
    parser.add_argument("--ldct", type=int, default=None)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--processing", default=None, help="comma-separated max_studies_processing values")
    parser.add_argument("--results", type=Path, default=None, help=f"write here instead of {RESULTS.name}")
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the paths behind the ratios (default 3; 1 with --quick)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: kafka,triton,rss100,"
                                                   "openloop,sweep,bigfolder")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    mammo = args.mammo if args.mammo is not None else (2 if quick else 6)
    ldct = args.ldct if args.ldct is not None else (1 if quick else 4)
    processing = [int(v) for v in (args.processing or ("2" if quick else "1,2,3")).split(",")]
    parts = ("kafka", "triton", "rss100", "openloop", "sweep", "bigfolder")
    skip = set(filter(None, args.skip.split(","))) | (set(parts) if quick else set())
    command = " ".join([".venv/bin/python -m perf.bench_throughput", *(argv or [])])

    from oncostream.synth.command import write_studies

    work = Path(tempfile.mkdtemp(prefix="oncostream-bench-"))
    service = triton = None
    report = Report(command=command, corpus="", sla=urgent_sla_s(), results_path=args.results,
                    load_start=_load(), pending=", ".join(p for p in parts if p not in skip))
    try:
        data = work / "studies"
        write_studies(data, mammo=mammo, ldct=ldct, seed=args.seed, size="small")
        instances, nbytes = _corpus_size(data)
        report.corpus = (f"{mammo} mammography exams + {ldct} LDCT series, `--size small`, seed {args.seed}; "
                         f"{instances} instances, {nbytes / 1e6:.1f} MB.")
        report.naive = naive(data, work)
        report.naive_same_work = naive(data, work, same_work=True)
        report.paths += [report.naive, report.naive_same_work]
        report.stages, calls, report.profile = profile_stages(data)
        report.ceiling = ceiling(calls, len(report.stages), instances, nbytes)
        report.paths.append(report.ceiling)
        runs = {k: embedded(data, work, k) for k in processing}
        report.paths.extend(runs.values())
        report.best_k = max(runs, key=lambda k: runs[k].studies_per_s)
        report.embedded_best = runs[report.best_k]
        # the alternative thread setting (settings.ort_threads): ONNX Runtime's default pool, every core on
        # each model run, one run at a time; reported beside the default, not chosen (not in the quick
        # variant, which shows the benchmark runs)
        if not quick:
            report.paths.append(embedded(data, work, report.best_k, env={"ONCOSTREAM_ORT_THREADS": "0"},
                                         label=f"embedded `oncostream run`, ONNX Runtime every core per run "
                                               f"(ONCOSTREAM_ORT_THREADS=0), {report.best_k} studies processing"))
        report.write()
        bootstrap = args.bootstrap
        if bootstrap is None and not {"kafka", "openloop", "rss100"} <= skip:
            from oncostream.services import kafka

            service = kafka.start(work / "kafka")
            bootstrap = service.env["KAFKA_BOOTSTRAP"]
        if "kafka" not in skip:
            for count in (1, 2):
                report.workers[count] = kafka_path(data, bootstrap, work, count)
                report.paths.append(report.workers[count])
            for count in (1, 2):
                report.backlog[count] = kafka_path(data, bootstrap, work, count, backlog=True)
                report.paths.append(report.backlog[count])
            report.pending = report.pending.replace("kafka", "").strip(", ")
            report.write()
        if "triton" not in skip:
            from oncostream.services import triton as triton_service

            triton = triton_service.start(work / "triton")
            report.paths.append(embedded(data, work, report.best_k, label="Triton (CPU repository): `oncostream run "
                                         f"--triton`, {report.best_k} studies processing",
                                         extra=("--triton", triton.env["TRITON_GRPC"])))
            triton.stop()
            triton = None
            report.write()
        big = work / "studies-100"
        if not {"rss100", "openloop"} <= skip:
            write_studies(big, mammo=60, ldct=40, seed=args.seed + 1, size="small")
        if "rss100" not in skip:
            ten = work / "studies-10"
            write_studies(ten, mammo=6, ldct=4, seed=args.seed + 1, size="small")
            for label, folder in (("10", ten), ("100", big)):
                report.rss.append((label, "embedded `oncostream run`", embedded(folder, work, report.best_k)))
                report.rss.append((label, "Kafka, 1 worker", kafka_path(folder, bootstrap, work, 1)))
            report.write()
        if "openloop" not in skip:
            import pydicom

            by_study: dict[str, list[Path]] = {}
            for path in _files(big):
                uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                          .StudyInstanceUID)
                by_study.setdefault(uid, []).append(path)
            pool = list(by_study.values())
            capacity = report.workers[1].studies_per_s if 1 in report.workers else 1.0
            for fraction in OPEN_LOOP_FRACTIONS:
                report.loop.append(open_loop(pool, bootstrap, work, capacity * fraction, 30.0, args.seed))
                report.write()
        if "sweep" not in skip:
            report.sweep = size_sweep(args.seed, [64, 128, 256, 512], [1024, 2048, 3072, 4096])
            report.write()
        if "bigfolder" not in skip:
            shutil.rmtree(big, ignore_errors=True)
            huge = work / "studies-2gb"
            write_studies(huge, mammo=BIG_FOLDER_MAMMO, ldct=BIG_FOLDER_LDCT, seed=args.seed + 2, size="full")
            report.big_folder = embedded(huge, work, report.best_k)
            shutil.rmtree(huge, ignore_errors=True)
        for _ in range(args.rounds - 1):
            report.repeats.append(repeat_round(report, data, work, calls,
                                               bootstrap if "kafka" not in skip else None))
            report.write()
        del calls
        report.pending = ""
        path = report.write()
    finally:
        if triton is not None:
            triton.stop()
        if service is not None:
            service.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    # as the `oncostream` command runs (oncostream/memory.py): the ceiling is measured under the same allocator
    restart_with_hugepages(["-m", "perf.bench_throughput", *sys.argv[1:]])
    sys.exit(main(sys.argv[1:]))
