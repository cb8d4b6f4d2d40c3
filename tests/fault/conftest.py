"""Fixtures of the fault suite: a few small synthetic studies, worker subprocesses, and services of the
suite's own (a broker, a Triton, an Orthanc) that a test may stop and start again without touching the
session's. Each service fixture leaves nothing running when its test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oncostream.services.base import RunningService
from tests.fault.ledger import Studies, WorkerProcess, load_studies, stop_all

SEED = 71_000  # not a seed other suites use


@pytest.fixture(scope="session")
def fault_studies(tmp_path_factory) -> Studies:
    """3 mammography exams and 2 LDCT series, small size (12 + 96 instances, about 8.5 MB)."""
    from oncostream.synth.command import write_studies

    folders = write_studies(tmp_path_factory.mktemp("fault-studies"), mammo=3, ldct=2, seed=SEED, size="small")
    return load_studies(folders)


@pytest.fixture
def spawn_worker() -> Iterator[Callable[..., WorkerProcess]]:
    """Starts `oncostream worker` subprocesses (WorkerProcess arguments); kills any left when the test ends."""
    started: list[WorkerProcess] = []

    def spawn(*args, **kwargs) -> WorkerProcess:
        started.append(WorkerProcess(*args, **kwargs))
        return started[-1]

    yield spawn
    stop_all(started)


@pytest.fixture
def own_broker(tmp_path) -> Iterator[RunningService]:
    """A single-node KRaft broker of this test's own, which the test may stop and start again."""
    from oncostream.services import kafka

    service = kafka.start(tmp_path / "kafka")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def own_triton(tmp_path, triton_repository: Path) -> Iterator[RunningService]:
    """A Triton of this test's own serving the session's CPU repository, which the test may stop and start
    again (the session's server is shared by other suites)."""
    from oncostream.services import triton

    service = triton.start(tmp_path / "triton", triton_repository)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def own_orthanc(tmp_path) -> Iterator[RunningService]:
    """An Orthanc of this test's own, which the test may stop and start again."""
    from oncostream.services import orthanc

    if not orthanc.is_available():
        pytest.skip("Orthanc is not installed (scripts/install_system_deps.sh installs it)")
    service = orthanc.start(tmp_path / "orthanc")
    try:
        yield service
    finally:
        service.stop()
