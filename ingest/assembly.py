"""Assembly: instances in, studies out.

- Mammography exam = the 4 standard screening views (LCC, LMLO, RCC, RMLO) of one StudyInstanceUID.
- LDCT = one axial series (SeriesInstanceUID): complete at ImagesInAcquisition (0020,1002) slices,
  localizers dropped, sorted along the slice normal, spacing checked.
A study that stays quiet for ``settings.assembly_timeout_s`` closes anyway, marked incomplete with what
was missing. Redelivered instances (same SOPInstanceUID) are ignored, which is what makes Kafka replays safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from pydicom import Dataset

from oncostream.settings import Settings
from oncostream.study import Study

log = logging.getLogger(__name__)

MAMMO_VIEWS = ("LCC", "LMLO", "RCC", "RMLO")
_SPACING_TOLERANCE = 0.1  # relative deviation from the median slice spacing that counts as a gap

Source = tuple[str, int, int]  # (topic, partition, offset)


@dataclass
class _Pending:
    key: str
    modality: str
    study_instance_uid: str
    program: str
    arrived_at: datetime
    last_seen: float
    by_sop: dict[str, Dataset] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    expected: int | None = None  # CT: ImagesInAcquisition


def mammo_view_key(ds: Dataset) -> str | None:
    """'LCC' etc. for a standard screening view, None for anything else (spot, magnification, XCCL...)."""
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    view = str(ds.get("ViewPosition", "")).upper()
    key = f"{laterality}{view}"
    return key if key in MAMMO_VIEWS else None


def is_localizer(ds: Dataset) -> bool:
    return "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]


def assembly_key(ds: Dataset, modality: str) -> str | None:
    """The unit an instance is assembled into ("MG:<study>" or "CT:<series>"); None when it is ignored."""
    if modality == "MG":
        return f"MG:{ds.StudyInstanceUID}" if mammo_view_key(ds) is not None else None
    return None if is_localizer(ds) else f"CT:{ds.SeriesInstanceUID}"


class Assembler:
    """Groups parsed instances into studies. Not thread-safe: one per consumer loop."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self._timeout = settings.assembly_timeout_s
        self._default_program = settings.program
        self._clock = clock
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ds: Dataset, source: Source | None = None, modality: str | None = None,
            program: str | None = None) -> list[Study]:
        """Add one instance; returns the studies it completed (zero or one)."""
        modality = modality or str(ds.Modality)
        key = assembly_key(ds, modality)
        if key is None:
            log.info("ignoring %s: a localizer or a non-screening view", ds.SOPInstanceUID)
            return []
        pending = self._pending.get(key)
        now = self._clock()
        if pending is None:
            pending = _Pending(key=key, modality=modality, study_instance_uid=str(ds.StudyInstanceUID),
                               program=program or self._default_program,
                               arrived_at=datetime.now(timezone.utc), last_seen=now)
            self._pending[key] = pending
        pending.last_seen = now
        if source is not None:
            pending.sources.append(source)
        sop = str(ds.SOPInstanceUID)
        if sop in pending.by_sop:
            log.info("duplicate instance %s ignored", sop)
            return []
        if modality == "MG":
            view = mammo_view_key(ds)
            if any(mammo_view_key(d) == view for d in pending.by_sop.values()):
                log.warning("second %s view %s in study %s ignored", view, sop, pending.study_instance_uid)
                return []
        else:
            expected = ds.get("ImagesInAcquisition")
            if expected:
                pending.expected = int(expected)
        pending.by_sop[sop] = ds
        if self._complete(pending):
            return [self._close(pending)]
        return []

    def expire(self, now: float | None = None) -> list[Study]:
        """Close studies quiet for longer than the assembly timeout (marked incomplete if short)."""
        now = self._clock() if now is None else now
        quiet = [p for p in self._pending.values() if now - p.last_seen >= self._timeout]
        return [self._close(p) for p in quiet]

    def flush_all(self) -> list[Study]:
        """Close everything pending (end of a finite input such as a directory)."""
        return [self._close(p) for p in list(self._pending.values())]

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Rebalance: forget studies holding instances of revoked partitions; they will be replayed."""
        for key, pending in list(self._pending.items()):
            if any((t, p) in partitions for t, p, _ in pending.sources):
                del self._pending[key]

    def pending_offsets(self) -> dict[tuple[str, int], int]:
        """Lowest offset still held by an unfinished study, per partition (the commit watermark)."""
        low: dict[tuple[str, int], int] = {}
        for pending in self._pending.values():
            for topic, partition, offset in pending.sources:
                tp = (topic, partition)
                low[tp] = min(offset, low.get(tp, offset))
        return low

    def _complete(self, pending: _Pending) -> bool:
        if pending.modality == "MG":
            return len(pending.by_sop) == len(MAMMO_VIEWS)
        return pending.expected is not None and len(pending.by_sop) >= pending.expected

    def _close(self, pending: _Pending) -> Study:
        del self._pending[pending.key]
        datasets = list(pending.by_sop.values())
        missing: list[str] = []
        if pending.modality == "MG":
            present = {mammo_view_key(d) for d in datasets}
            missing = [v for v in MAMMO_VIEWS if v not in present]
            datasets.sort(key=lambda d: MAMMO_VIEWS.index(mammo_view_key(d)))
        else:
            datasets, missing = sort_ct_series(datasets, pending.expected)
        if missing:
            log.warning("study %s closed incomplete: %s", pending.study_instance_uid, ", ".join(missing))
        return Study(study_instance_uid=pending.study_instance_uid, modality=pending.modality,
                     datasets=datasets, arrived_at=pending.arrived_at, program=pending.program,
                     incomplete=bool(missing), missing=missing, sources=list(pending.sources),
                     assembly_key=pending.key)


def sort_ct_series(datasets: list[Dataset], expected: int | None) -> tuple[list[Dataset], list[str]]:
    """Sort slices along the normal of ImageOrientationPatient; report gaps and short counts."""
    missing: list[str] = []
    if expected is not None and len(datasets) < expected:
        missing.append(f"{expected - len(datasets)} of {expected} slices")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = {str(d.SOPInstanceUID): float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float)))
                 for d in datasets}
    datasets = sorted(datasets, key=lambda d: positions[str(d.SOPInstanceUID)])
    z = np.array([positions[str(d.SOPInstanceUID)] for d in datasets])
    if len(z) >= 3:
        steps = np.diff(z)
        spacing = float(np.median(steps))
        bad = np.abs(steps - spacing) > _SPACING_TOLERANCE * max(spacing, 1e-6)
        for i in np.flatnonzero(bad):
            missing.append(f"irregular slice spacing between {z[i]:.2f} mm and {z[i + 1]:.2f} mm")
    return datasets, missing
