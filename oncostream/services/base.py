"""Real services started by the project (Kafka, Triton, Orthanc, Prometheus) share this shape:
`start(workdir) -> RunningService`, free ports picked at run time, readiness polled with a bound.
A service that can come back as it was (same ports, same data) also gets `restart()`: the fault tests
stop a broker, an inference server or a PACS under a running worker and bring it back."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class ServiceStartError(RuntimeError):
    pass


@dataclass
class RunningService:
    name: str
    env: dict[str, str]  # e.g. {"KAFKA_BOOTSTRAP": "127.0.0.1:40123"}
    process: subprocess.Popen | None
    workdir: Path
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)
    # how start() launched the process and knew it was ready: what start_again() repeats
    launch: Callable[[], subprocess.Popen] | None = field(default=None, repr=False)
    ready: Callable[[], bool] | None = field(default=None, repr=False)
    ready_timeout_s: float = 120.0

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def start_again(self) -> None:
        """Launch the stopped service again on the same ports with the data it had, and wait until it is
        ready (bounded by ``ready_timeout_s``)."""
        if self.launch is None or self.ready is None:
            raise ServiceStartError(f"{self.name}: this service cannot be started again in place")
        if self.process is not None and self.process.poll() is None:
            raise ServiceStartError(f"{self.name}: still running (pid {self.process.pid}); stop() it first")
        self.process = self.launch()
        try:
            wait_until(self.ready, self.ready_timeout_s, f"{self.name} started again", process=self.process,
                       log_path=self.log_path)
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout_s: float = 30.0) -> None:
        """stop() then start_again(): same ports, same data."""
        self.stop(timeout_s)
        self.start_again()


def java_executable() -> str:
    """The `java` (17+) of JAVA_HOME or PATH, for the services that run on the JVM (Kafka, S3Proxy)."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceStartError("java (17+) not found; install a JDK 17 or set JAVA_HOME")
    return java


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(ready: Callable[[], bool], timeout_s: float, what: str,
               process: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    """Poll `ready` until true; fail early if `process` died, with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceStartError(f"{what} exited with {process.returncode}{_tail(log_path)}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.2)
    raise ServiceStartError(f"{what} not ready after {timeout_s:.0f} s{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return "\n--- log tail ---\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
