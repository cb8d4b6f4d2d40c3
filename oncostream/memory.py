"""Returning freed memory to the operating system between studies (glibc only; elsewhere a no-op).

A study's working set is large and short-lived (a full-size LDCT series is ~170 MB per float32 copy)
and is allocated on several threads. glibc keeps what NumPy, ONNX Runtime and DALI free: its mmap
threshold climbs after the first large free (up to 32 MiB), so later buffers of a few MiB land in
per-thread heaps that are trimmed only from their top. The process then holds the high-water mark of
every thread's heap for good: on a 2 GB folder `oncostream run` peaked at 2,310 MiB and sat near 2 GiB
with no study in flight. Two settings fix that without touching the data path:

- ``configure_allocator``: a fixed mmap threshold of 1 MiB, so large buffers are mapped and unmapped
  on their own (freed at once) instead of fragmenting the heaps;
- ``release_freed_memory``: ``malloc_trim(0)`` after each study, which gives back the free pages in
  the middle of every heap as well.

Measured together on that folder: 2,310 -> 1,957 MiB peak (perf/RESULTS.md, the reading).

And one that does: ``hugepage_environment``. Without ONNX Runtime's arena (which would keep a run's
largest activations for good) every activation of every model run is a fresh mapping of up to a few
hundred MiB, faulted in 4 KiB page by page: a third of `oncostream run`'s CPU time was the kernel's
(2.9 s sys of 13.4 s). glibc 2.35+ asks for transparent huge pages on its mappings when the tunable
``glibc.malloc.hugetlb=1`` is set (NumPy already does so for its own arrays); glibc reads it only when
a process starts, so the `oncostream` command starts itself again with it set (oncostream/cli.py). The
bench's 10 studies: 5.9 -> 5.3 s, sys 2.9 -> 2.1 s, the same peak RSS. ``ONCOSTREAM_HUGEPAGES=0``
turns it off (where the kernel's THP is "never" the tunable does nothing).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 1 << 20

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_configured = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
            return None  # musl, macOS: nothing to configure
        _libc = libc
    return _libc


def configure_allocator() -> bool:
    """Set the fixed mmap threshold once per process; True when glibc accepted it."""
    global _configured
    with _lock:
        if _configured:
            return True
        libc = _glibc()
        if libc is None or libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
            log.debug("allocator left at its defaults (not glibc, or mallopt refused)")
            return False
        _configured = True
        return True


def release_freed_memory() -> None:
    """Give the free pages of every heap back to the operating system (measured under 1 ms per call after
    a full-size LDCT series and an exam)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def hugepage_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """``environ`` with glibc's transparent-huge-page tunable added to GLIBC_TUNABLES, to start the
    process again with; None when there is nothing to do: not Linux, the tunable already set (to
    anything), or ``ONCOSTREAM_HUGEPAGES=0``."""
    if not sys.platform.startswith("linux") or environ.get("ONCOSTREAM_HUGEPAGES", "1") == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, HUGEPAGE_TUNABLE)))}


def restart_with_hugepages(python_args: list[str]) -> None:
    """Replace this process (exec: the same PID, so supervisors and signals see one process) by
    ``python python_args...`` with hugepage_environment's tunable set; returns when there is nothing
    to do (see hugepage_environment). Only a command's entry point calls it, never library code."""
    env = hugepage_environment()
    if env is None:
        return
    try:
        os.execve(sys.executable, [sys.executable, *python_args], env)
    except OSError as exc:  # a tuning, never a reason not to start: run on in this process
        log.warning("could not restart with %s (%s): running without it", HUGEPAGE_TUNABLE, exc)


def without_hugepages(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``environ`` without the tunable hugepage_environment adds (a child that should run as a plain
    Python process would: the benchmark's naive script)."""
    env = dict(environ)
    tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t != HUGEPAGE_TUNABLE]
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env
