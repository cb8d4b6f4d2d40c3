"""Liveness of the worker's own loop, not of the thread serving /metrics (which answers while the loop
hangs): the loop calls ``beat()`` every time round; that sets the heartbeat gauge Prometheus alerts on
and, with ``--health-file``, rewrites a file whose age ``oncostream health`` checks (a Kubernetes exec
liveness probe, a container HEALTHCHECK).

The loop polls Kafka at most 0.5 s at a time and backs off in 0.5 s steps, so a healthy loop beats at
least every few seconds; a probe allows much more (``--max-age``) because one study's publication, or a
commit, may hold the loop for a while.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from oncostream import metrics

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 300.0
_WRITE_EVERY_S = 1.0


class Heartbeat:
    """Rewrites ``path`` (atomically: write + rename, so a probe never reads half) at most once a second."""

    def __init__(self, path: Path | None):
        if path is not None and not isinstance(path, (str, Path)):
            raise TypeError(f"path: expected a path or None, got {type(path).__name__}")
        self.path = Path(path) if path is not None else None
        self._written = 0.0

    def beat(self) -> None:
        metrics.beat("worker")
        if self.path is None:
            return
        now = time.time()
        if now - self._written < _WRITE_EVERY_S:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(f"{now:.3f}\n")
            os.replace(partial, self.path)
            self._written = now
        except OSError:  # an observer: a full or read-only disk shows up as a failing probe instead
            log.exception("could not write the heartbeat file %s", self.path)


_heartbeat = Heartbeat(None)


def configure(path: Path | None) -> None:
    """Called once by the worker before its loop starts; beats once so that start-up counts as alive."""
    global _heartbeat
    _heartbeat = Heartbeat(path)
    _heartbeat.beat()


def beat() -> None:
    _heartbeat.beat()


def heartbeat_age(path: Path, now: float | None = None) -> float | None:
    """Seconds since the loop last wrote ``path``; None when it never did."""
    try:
        written = float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    # the file holds a rounded timestamp: a read right after a beat may come out a hair negative
    return max(0.0, (time.time() if now is None else now) - written)


def main_health(args) -> int:
    """`oncostream health --file PATH [--max-age S]`: 0 when the loop beat within S seconds, else 1."""
    age = heartbeat_age(args.file)
    if age is None:
        print(f"unhealthy: no heartbeat in {args.file}")
        return 1
    if age > args.max_age:
        print(f"unhealthy: the worker loop last went round {age:.0f} s ago (limit {args.max_age:.0f} s)")
        return 1
    print(f"healthy: the worker loop went round {age:.1f} s ago")
    return 0
