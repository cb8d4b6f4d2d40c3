"""Produce -> worker -> triage throughput over the real broker, next to the embedded run of the same studies.

    .venv/bin/python -m perf.bench_kafka [--mammo N] [--ldct N] [--size small|full] [--seed S]

Both paths run the same pipeline (embedded backend) on the same machine, models loaded before the clock
starts: the embedded path reads the directory and processes study by study in this process; the Kafka
path produces every instance and times until the last triage event is on `oncostream.triage`, with an
`oncostream worker` subprocess already in its consumer group. Writes its section of perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf.results import write_section

ONCOSTREAM = str(Path(sys.executable).with_name("oncostream"))


def _embedded(data_dir: Path, out: Path) -> tuple[float, int, int, int]:
    """Seconds, instances, bytes, studies for the in-process pipeline over `data_dir` (models preloaded)."""
    from ingest.assembly import Assembler
    from ingest.directory import DirectorySource
    from oncostream.app.lifecycle import Outcome, RejectionLog, StudyLifecycle, validate
    from oncostream.app.pipeline import Pipeline, make_backend
    from oncostream.settings import Settings
    from postprocess.file_sink import FileSink

    settings = Settings()
    backend = make_backend(settings)
    sink = FileSink(out)
    assembler = Assembler(settings)
    # the served path: the same lifecycle as `oncostream run` (process, publish, dead-letter)
    lifecycle = StudyLifecycle(settings, Pipeline(settings, backend), [sink], RejectionLog(out / "rejected.jsonl"),
                               wait=lambda s: False, assembler=assembler)
    instances = nbytes = studies = 0
    started = time.monotonic()
    for message in DirectorySource(data_dir):
        instances += 1
        nbytes += len(message.data)
        ds, modality = validate(message.data, settings)
        for study in assembler.add(ds, modality=modality):
            studies += lifecycle.finish(study).outcome is Outcome.PUBLISHED
    for study in assembler.flush_all():
        studies += lifecycle.finish(study).outcome is Outcome.PUBLISHED
    seconds = time.monotonic() - started
    sink.close()
    backend.close()
    return seconds, instances, nbytes, studies


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}: {path.read_text()[-2000:]}")
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker did not log {text!r} within {timeout_s:.0f} s")


def _kafka(data_dir: Path, bootstrap: str, workdir: Path, expected_studies: int) -> dict:
    from kafka import KafkaConsumer

    from oncostream.services.kafka import create_topics
    from oncostream.settings import Settings
    from oncostream.streaming import compression_type, instance_files, produce_files

    stem = f"bench-{int(time.time())}"
    settings = Settings(topic_dicom=f"{stem}.dicom", topic_triage=f"{stem}.triage", topic_results=f"{stem}.results",
                        topic_dlq=f"{stem}.dlq", consumer_group=f"{stem}-workers",
                        claim_check_dir=workdir / "claims")
    create_topics(bootstrap, {settings.topic_dicom: 6, settings.topic_triage: 3, settings.topic_results: 3,
                              settings.topic_dlq: 1})
    env = {**os.environ, "ONCOSTREAM_TOPIC_TRIAGE": settings.topic_triage,
           "ONCOSTREAM_TOPIC_RESULTS": settings.topic_results, "ONCOSTREAM_TOPIC_DLQ": settings.topic_dlq,
           "ONCOSTREAM_CONSUMER_GROUP": settings.consumer_group,
           "ONCOSTREAM_CLAIM_CHECK_DIR": str(settings.claim_check_dir)}
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([ONCOSTREAM, "worker", "--bootstrap", bootstrap, "--topic", settings.topic_dicom,
                                   "--max-studies", str(expected_studies)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_line(log_path, "partitions assigned", worker, 300)
        triage = KafkaConsumer(settings.topic_triage, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                               enable_auto_commit=False, group_id=None)
        triage.poll(timeout_ms=1000)
        started = time.monotonic()
        report = produce_files(instance_files(data_dir), settings, bootstrap)
        seen: set[bytes] = set()
        deadline = started + 3600
        while len(seen) < expected_studies and time.monotonic() < deadline:
            for records in triage.poll(timeout_ms=500).values():
                seen.update(r.key for r in records)
        seconds = time.monotonic() - started
        triage.close()
        if len(seen) < expected_studies:
            raise TimeoutError(f"only {len(seen)} of {expected_studies} triage events arrived")
        worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=60)
    return {"seconds": seconds, "instances": report.instances, "bytes": report.bytes,
            "produce_seconds": report.seconds, "compression": compression_type(), "studies": len(seen)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perf.bench_kafka", description=__doc__.splitlines()[0])
    parser.add_argument("--mammo", type=int, default=6)
    parser.add_argument("--ldct", type=int, default=4)
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    args = parser.parse_args(argv)

    from oncostream.synth.command import write_studies

    with tempfile.TemporaryDirectory(prefix="oncostream-bench-kafka-") as tmp:
        root = Path(tmp)
        data_dir = root / "studies"
        write_studies(data_dir, mammo=args.mammo, ldct=args.ldct, seed=args.seed, size=args.size)
        emb_s, emb_instances, emb_bytes, emb_studies = _embedded(data_dir, root / "embedded-out")
        service = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            from oncostream.services import kafka

            service = kafka.start(root / "kafka")
            bootstrap = service.env["KAFKA_BOOTSTRAP"]
        try:
            k = _kafka(data_dir, bootstrap, root, emb_studies)
        finally:
            if service is not None:
                service.stop()

    def row(name: str, seconds: float, instances: int, nbytes: int, studies: int) -> str:
        return (f"| {name} | {studies} | {instances} | {nbytes / 1e6:.1f} | {seconds:.1f} | "
                f"{instances / seconds:.1f} | {nbytes / 1e6 / seconds:.2f} |")

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    body = "\n".join([
        f"{args.mammo} mammography exams + {args.ldct} LDCT series, `--size {args.size}`, seed {args.seed}, "
        f"embedded backend (ONNX Runtime, CPU). Models are loaded before the clock starts in both paths. "
        f"One broker, one worker, 6 input partitions. Load average at the end (1/5/15 min): {load} "
        f"(a shared machine: other jobs ran at the same time, so read the ratio more than the absolutes).",
        "",
        "| path | studies | instances | MB | seconds | instances/s | MB/s |",
        "|---|---|---|---|---|---|---|",
        row("embedded `oncostream run` pipeline (directory, in-process)", emb_s, emb_instances, emb_bytes,
            emb_studies),
        row("Kafka: produce -> 1 worker -> triage topic", k["seconds"], k["instances"], k["bytes"], k["studies"]),
        "",
        f"Producing alone ({k['compression']} compression, acks=all): {k['instances'] / k['produce_seconds']:.1f} "
        f"instances/s, {k['bytes'] / 1e6 / k['produce_seconds']:.1f} MB/s. "
        f"Kafka path / embedded wall time: {k['seconds'] / emb_s:.2f}x.",
    ])
    command = " ".join([".venv/bin/python -m perf.bench_kafka", *(argv or [])])  # `make bench` runs it too
    path = write_section("Kafka streaming throughput (perf/bench_kafka.py)", command, body)
    print(body)
    print(json.dumps({"embedded_s": emb_s, "kafka": k}, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
