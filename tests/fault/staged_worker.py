"""`oncostream worker` that halts at one stage of the study lifecycle, so a test can SIGKILL it (or take a
service away) at that point and nowhere else.

    python -m tests.fault.staged_worker STAGE DIR worker --bootstrap ... (the `oncostream worker` arguments)

The first time the worker reaches STAGE it writes the StudyInstanceUID concerned to ``DIR/STAGE`` and waits
until ``DIR/go`` exists (a test that kills it never writes it). Stages, in lifecycle order:

- ``assembled``: a study's last instance was consumed and assembly completed it; nothing processed yet
  (other studies may be half assembled), nothing of it published or committed.
- ``inferred``: the pipeline returned the study's result; no sink has seen it.
- ``published``: every sink flushed the study (the broker acknowledged its records); its offsets are not
  committed yet.

The halt is a wrapper installed here around the worker's own methods (``Assembler.add``, ``Pipeline.process``,
``StudyLifecycle._publish``): the product has no fault hook, and everything else runs as `oncostream worker`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

STAGES = ("assembled", "inferred", "published")
GO = "go"


def _halt_once(stage: str, folder: Path):
    reached = False

    def halt(study_uid: str) -> None:
        nonlocal reached
        if reached:
            return
        reached = True
        (folder / f"{stage}.tmp").write_text(study_uid)
        (folder / f"{stage}.tmp").rename(folder / stage)  # whole or absent: the test reads it once it exists
        while not (folder / GO).exists():
            time.sleep(0.05)

    return halt


def install(stage: str, folder: Path) -> None:
    from ingest.assembly import Assembler
    from oncostream.app.lifecycle import Outcome, StudyLifecycle
    from oncostream.app.pipeline import Pipeline

    halt = _halt_once(stage, folder)
    if stage == "assembled":
        add = Assembler.add

        def add_then_halt(self, *args, **kwargs):
            completed = add(self, *args, **kwargs)
            if completed:
                halt(completed[0].study_instance_uid)
            return completed

        Assembler.add = add_then_halt
    elif stage == "inferred":
        process = Pipeline.process

        def process_then_halt(self, study):
            result = process(self, study)
            halt(study.study_instance_uid)
            return result

        Pipeline.process = process_then_halt
    elif stage == "published":
        publish = StudyLifecycle._publish

        def publish_then_halt(self, study, result):
            finished = publish(self, study, result)
            if finished.outcome is Outcome.PUBLISHED:
                halt(study.study_instance_uid)
            return finished

        StudyLifecycle._publish = publish_then_halt
    else:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def one_at_a_time() -> None:
    from oncostream.app.lifecycle import ConcurrentStudies

    init = ConcurrentStudies.__init__

    def without_backlog(self, lifecycle, capacity, backlog=0, **options):
        init(self, lifecycle, capacity, backlog=0, **options)

    ConcurrentStudies.__init__ = without_backlog


def main(argv: list[str]) -> int:
    stage, folder, *worker_args = argv
    # one study processed at a time, none waiting: "halted at a stage" then describes the whole worker (with
    # several processing threads, or a backlog published in one group, other studies would carry on past it)
    os.environ.setdefault("ONCOSTREAM_MAX_STUDIES_PROCESSING", "1")
    one_at_a_time()
    install(stage, Path(folder))
    from oncostream.cli import main as oncostream_main

    return oncostream_main(worker_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
