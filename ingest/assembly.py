"""Assembly: instances in, studies out.

- Mammography exam = the 4 standard screening views (LCC, LMLO, RCC, RMLO) of one StudyInstanceUID.
- LDCT = one CT study (StudyInstanceUID) with every series it carries, complete when each series seen
  has its ImagesInAcquisition (0020,1002) slices; localizers dropped; on closing, the series to read
  is chosen (ingest/canonical/ldct.py select_series), sorted along the slice normal, spacing checked.
A study that stays quiet for ``settings.assembly_timeout_s`` closes anyway, marked incomplete with what
was missing. Redelivered instances (same SOPInstanceUID) are ignored, which is what makes Kafka replays safe.

Every study fails alone: an instance assembly cannot use (no geometry, a count that is not a number) is
refused with RejectedInstance and marks its study failed, and a study whose closing raises comes out with
``Study.error`` set, so the caller dead-letters it whole while the other studies of the same tick go on.
Instances of a study the caller reported ``finished()`` are ignored (bounded LRU + TTL): a view resent after
its exam was published must not open a one-view exam whose result would replace the published one.
Bounds: ``max_pending_studies`` and ``max_pending_bytes`` close the oldest pending study early, and
``max_study_age_s`` closes a study however it keeps receiving; both are marked incomplete and say why.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from pydicom import Dataset

from ingest.canonical.ldct import has_screening_series, select_series
from oncostream.errors import RejectedInstance, StudyFailed
from oncostream.ids import patient_pseudonym
from oncostream.settings import Settings
from oncostream.study import Study, mammo_view

log = logging.getLogger(__name__)

MAMMO_VIEWS = ("LCC", "LMLO", "RCC", "RMLO")
_SPACING_TOLERANCE = 0.1  # relative deviation from the median slice spacing that counts as a gap

Source = tuple[str, int, int]  # (topic, partition, offset)
_warned_no_pseudonym_key = False


def _warn_no_pseudonym_key() -> None:
    """Once per process: without the program's secret no study gets a patient key, so the results store
    cannot link a follow-up to the patient's earlier rounds (no per-installation default key is made up:
    two installations would then link differently, and a key nobody configured is a key nobody guards)."""
    global _warned_no_pseudonym_key
    if not _warned_no_pseudonym_key:
        _warned_no_pseudonym_key = True
        log.warning("ONCOSTREAM_PSEUDONYM_KEY is not set: studies are not linked to their patients' earlier "
                    "screening rounds in the results store (follow-up categories only from a PACS query)")


@dataclass
class _Pending:
    key: str
    modality: str
    study_instance_uid: str
    program: str
    arrived_at: datetime
    last_seen: float
    created: float = 0.0
    by_sop: dict[str, Dataset] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    expected: dict[str, int] = field(default_factory=dict)  # CT: ImagesInAcquisition per series
    nbytes: int = 0
    failure: StudyFailed | None = None  # an instance assembly could not use: the study fails whole
    closed_early: str | None = None  # why a bound closed it before it completed or went quiet


def mammo_view_key(ds: Dataset) -> str | None:
    """'LCC' etc. for a standard screening view, None for anything else (spot, magnification, XCCL...)."""
    laterality, view = mammo_view(ds)
    key = f"{laterality}{view}"
    return key if key in MAMMO_VIEWS else None


def is_localizer(ds: Dataset) -> bool:
    return "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]


def assembly_key(ds: Dataset, modality: str) -> str | None:
    """The unit an instance is assembled into ("MG:<study>" or "CT:<study>", every series of it: the
    series read is chosen when the study closes); None when it is ignored."""
    if modality == "MG":
        return f"MG:{ds.StudyInstanceUID}" if mammo_view_key(ds) is not None else None
    return None if is_localizer(ds) else f"CT:{ds.StudyInstanceUID}"


def _instance_problem(ds: Dataset, modality: str) -> tuple[str, str] | None:
    """(reason, detail) when assembly cannot use this instance; None when it can."""
    if modality != "CT":
        return None
    for name, count in (("ImageOrientationPatient", 6), ("ImagePositionPatient", 3)):
        try:
            values = [float(v) for v in ds.get(name) or []]
        except (TypeError, ValueError):
            return "invalid_attribute", f"{name} is not {count} numbers"
        if len(values) != count:
            return "missing_geometry", f"{name} is missing or not {count} numbers: the slice cannot be placed"
    try:
        expected = ds.get("ImagesInAcquisition")
        if expected not in (None, "") and int(expected) < 1:
            raise ValueError
    except (TypeError, ValueError):
        return "invalid_attribute", "ImagesInAcquisition is not a positive integer"
    return None


def _instance_bytes(ds: Dataset) -> int:
    element = ds.get("PixelData")
    return len(element) if isinstance(element, (bytes, bytearray)) else 0


class Assembler:
    """Groups parsed instances into studies. Not thread-safe: one per consumer loop."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self._timeout = settings.assembly_timeout_s
        self._default_program = settings.program
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._max_studies = settings.max_pending_studies
        self._max_bytes = settings.max_pending_bytes
        self._max_age = settings.max_study_age_s
        self._finished: OrderedDict[str, float] = OrderedDict()  # assembly key -> when finished
        self._finished_max = settings.finished_memory
        self._finished_ttl = settings.finished_memory_s
        key = getattr(settings, "pseudonym_key", None)
        self._pseudonym_key = key.get_secret_value().encode() if key is not None else None
        if self._pseudonym_key is None:
            _warn_no_pseudonym_key()

    def _patient_key(self, datasets: list[Dataset]) -> str | None:
        """The patient pseudonym (never logged); None without a key or a PatientID."""
        if self._pseudonym_key is None or not datasets:
            return None
        first = datasets[0]
        return patient_pseudonym(str(first.get("PatientID", "") or ""),
                                 str(first.get("IssuerOfPatientID", "") or ""), self._pseudonym_key)

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return sum(p.nbytes for p in self._pending.values())

    def add(self, ds: Dataset, source: Source | None = None, modality: str | None = None,
            program: str | None = None, nbytes: int | None = None) -> list[Study]:
        """Add one instance; returns the studies it completed or a bound closed early.

        Raises RejectedInstance for an instance assembly cannot use; its study is then marked failed
        and comes out of ``expire``/``flush_all`` with ``error`` set (its other instances go with it).
        """
        modality = modality or str(ds.Modality)
        key = assembly_key(ds, modality)
        if key is None:
            log.info("ignoring an instance: a localizer or a non-screening view")
            return []
        now = self._clock()
        if self._recently_finished(key, now):
            log.info("ignoring a late instance of a study already finished")
            return []
        problem = _instance_problem(ds, modality)
        pending = self._pending.get(key)
        if pending is None:
            pending = _Pending(key=key, modality=modality, study_instance_uid=str(ds.StudyInstanceUID),
                               program=program or self._default_program,
                               arrived_at=datetime.now(timezone.utc), last_seen=now, created=now)
            self._pending[key] = pending
        sop = str(ds.SOPInstanceUID)
        if problem is not None:
            pending.last_seen = now
            if pending.failure is None:
                pending.failure = StudyFailed(problem[0], f"an instance of the study was refused: {problem[1]}",
                                              pending.study_instance_uid)
            raise RejectedInstance(problem[0], problem[1], sop)
        if source is not None:
            pending.sources.append(source)
        if sop in pending.by_sop:  # a resend does not refresh last_seen: it cannot keep a study open
            log.info("duplicate instance ignored")
            return []
        pending.last_seen = now
        if modality == "MG":
            view = mammo_view_key(ds)
            if any(mammo_view_key(d) == view for d in pending.by_sop.values()):
                log.warning("second %s view in a study ignored", view)
                return []
        else:
            expected = ds.get("ImagesInAcquisition")
            if expected not in (None, ""):
                pending.expected[str(ds.SeriesInstanceUID)] = int(expected)
        pending.by_sop[sop] = ds
        pending.nbytes += _instance_bytes(ds) if nbytes is None else nbytes
        closed = [self._close(pending)] if self._complete(pending) else []
        return closed + self._enforce_caps()

    def finished(self, key: str) -> None:
        """The caller published or dead-lettered the study of `key`: later instances of it are ignored."""
        self._finished[key] = self._clock()
        self._finished.move_to_end(key)
        while len(self._finished) > self._finished_max:
            self._finished.popitem(last=False)

    def _recently_finished(self, key: str, now: float) -> bool:
        while self._finished:
            oldest, at = next(iter(self._finished.items()))
            if now - at < self._finished_ttl:
                break
            del self._finished[oldest]
        return key in self._finished

    def _enforce_caps(self) -> list[Study]:
        closed = []
        while self._pending and (len(self._pending) > self._max_studies or self.pending_bytes > self._max_bytes):
            oldest = min(self._pending.values(), key=lambda p: p.created)
            cap = "pending-study cap" if len(self._pending) > self._max_studies else "pending-bytes cap"
            log.warning("assembly bound reached (%s): closing the oldest pending study early", cap)
            oldest.closed_early = f"closed early at the {cap}"
            closed.append(self._close(oldest))
        return closed

    def keep_alive(self, partitions: set[tuple[str, int]]) -> None:
        """Studies holding instances of ``partitions`` are not quiet: restart their quiet clock. The worker
        passes its paused partitions (backpressure, backoff), whose next instances wait unread in Kafka;
        the absolute age limit still applies."""
        if not partitions:
            return
        now = self._clock()
        for pending in self._pending.values():
            if any((topic, partition) in partitions for topic, partition, _ in pending.sources):
                pending.last_seen = now

    def expire(self, now: float | None = None) -> list[Study]:
        """Close studies quiet for longer than the assembly timeout (marked incomplete if short), and
        studies older than the absolute age limit however they keep receiving."""
        now = self._clock() if now is None else now
        closing = []
        for p in self._pending.values():
            if now - p.created >= self._max_age:
                p.closed_early = "closed at the age limit"
                closing.append(p)
            elif now - p.last_seen >= self._timeout:
                closing.append(p)
        return [self._close(p) for p in closing]

    def flush_all(self) -> list[Study]:
        """Close everything pending (end of a finite input such as a directory)."""
        return [self._close(p) for p in list(self._pending.values())]

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Rebalance: forget studies holding instances of revoked partitions; they will be replayed."""
        for key, pending in list(self._pending.items()):
            if any((t, p) in partitions for t, p, _ in pending.sources):
                del self._pending[key]

    def holds(self, source: Source) -> bool:
        """Whether a pending study holds the instance that came from `source`."""
        return any(source in p.sources for p in self._pending.values())

    def pending_offsets(self) -> dict[tuple[str, int], int]:
        """Lowest offset still held by an unfinished study, per partition (the commit watermark)."""
        low: dict[tuple[str, int], int] = {}
        for pending in self._pending.values():
            for topic, partition, offset in pending.sources:
                tp = (topic, partition)
                low[tp] = min(offset, low.get(tp, offset))
        return low

    def _complete(self, pending: _Pending) -> bool:
        if pending.failure is not None:  # held until quiet, so the whole study is dead-lettered together
            return False
        if pending.modality == "MG":
            return len(pending.by_sop) == len(MAMMO_VIEWS)
        # every series seen so far complete, one of them of screening thickness: a series that comes
        # after the study closed is ignored as late (logged), so a study holding only thick
        # reconstructions waits until quiet in case the screening series follows
        counts = Counter(str(d.SeriesInstanceUID) for d in pending.by_sop.values())
        return (all(series in pending.expected and count >= pending.expected[series]
                    for series, count in counts.items())
                and has_screening_series(list(pending.by_sop.values())))

    def _close(self, pending: _Pending) -> Study:
        """Never raises: a study that cannot be closed comes out with ``error`` set (it fails alone)."""
        del self._pending[pending.key]
        datasets = list(pending.by_sop.values())
        missing: list[str] = []
        series_uid, skipped_series = None, []
        error = pending.failure
        if error is None:
            try:
                if pending.modality == "MG":
                    present = {mammo_view_key(d) for d in datasets}
                    missing = [v for v in MAMMO_VIEWS if v not in present]
                    datasets.sort(key=lambda d: MAMMO_VIEWS.index(mammo_view_key(d)))
                else:
                    choice = select_series(datasets, pending.study_instance_uid)
                    series_uid, skipped_series = choice.series_instance_uid, choice.skipped
                    datasets, missing = sort_ct_series(choice.datasets, pending.expected.get(series_uid))
            except StudyFailed as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - one study's odd instances must not take the others
                error = StudyFailed("assembly_failed", f"{type(exc).__name__}: {exc}", pending.study_instance_uid)
        if pending.closed_early:
            missing.append(pending.closed_early)
        if error is not None:
            log.warning("a %s study failed assembly: %s", pending.modality, error.reason)
        elif missing:
            log.warning("a %s study closed incomplete: %s", pending.modality, ", ".join(missing))
        return Study(study_instance_uid=pending.study_instance_uid, modality=pending.modality,
                     datasets=datasets, arrived_at=pending.arrived_at, program=pending.program,
                     incomplete=bool(missing), missing=missing, sources=list(pending.sources),
                     assembly_key=pending.key, error=error, series_instance_uid=series_uid,
                     skipped_series=skipped_series,
                     patient_key=self._patient_key(datasets) if error is None else None)


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
