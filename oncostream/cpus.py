"""How many cores this process may use: the CPU affinity, capped by a cgroup CPU quota.

A container's CPU limit (Kubernetes ``resources.limits.cpu``) is a cgroup quota, not an affinity: on a
64-core node a pod limited to 4 CPUs still sees 64 cores in ``os.sched_getaffinity``. Sizing thread
pools from that would run 64 model runs at once inside a 4-CPU quota (throttled, and each holding its
activations in memory). cgroup v2 states the quota in ``cpu.max`` ("max 100000" or "400000 100000");
cgroup v1 in ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cores(cgroup: Path = CGROUP) -> int | None:
    """The cgroup CPU quota rounded up to whole cores, or None when there is none (or none readable)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def usable_cores(cgroup: Path = CGROUP) -> int:
    """Cores this process may run on (affinity), capped by the cgroup quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = quota_cores(cgroup)
    return max(1, min(affinity, quota) if quota else affinity)
