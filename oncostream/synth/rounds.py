"""Screening rounds: the same synthetic patients examined again 12-24 months later (`synth --rounds R`).

Layout: OUT/round-1/, OUT/round-2/, ... each laid out like a single-round set (mg-0000/, ct-0000/,
ground_truth/). Patient ``i`` keeps PatientID and IssuerOfPatientID in every round; each round is a new
study (StudyInstanceUID, AccessionNumber, StudyDate 365-730 days after the previous round).

LDCT: the same anatomy lying elsewhere on the table (the scan window 20-60 mm along z in patient
coordinates, the patient up to 5 mm within it), so two rounds' patient coordinates are not one frame.
Each nodule of the previous round grows (Lung-RADS growth: more than 1.5 mm mean diameter a year),
stays stable (within 0.4 mm), or resolves; calcified nodules stay. New nodules may appear. The truth
says, per nodule, which prior nodule it is, the true growth, whether that is growth by Lung-RADS v2022
and the true follow-up category (postprocess/lungrads.py rules on the true sizes, before 4X).

Mammography: the same breasts and lesions; in round 2 some exams carry an interval cancer, a malignant
lesion absent from round 1 (``new_since_prior`` in the truth).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from oncostream.synth.command import study_seed, write_series
from oncostream.synth.ground_truth import LdctTruth, MammoTruth
from oncostream.synth.ldct import LdctFollowUp, LdctPhantom, ldct_datasets, make_ldct_phantom
from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets
from postprocess import lungrads
from postprocess.priority import load_program

_log = logging.getLogger(__name__)
ISSUER = "ONCOSTREAM-SYNTH"
GROWTH_PER_YEAR_MM = (2.5, 6.0)  # a grown nodule's mean-diameter increase per 365 days
STABLE_MM = 0.4  # a stable nodule changes by at most this (measurement-level wobble)
INTERVAL_CANCER_RATE = 0.2  # share of round-2 mammography exams with an interval cancer


@dataclass(frozen=True)
class LdctRoundPlan:
    """What happens to one LDCT patient between two rounds; None fields are drawn from the seed.

    ``changes``: per prior nodule, "grown" | "stable" | "resolved"; ``new_nodules``: specs as
    make_ldct_phantom takes them (``diameter_mm``, ``composition``, ``margin``, ``malignant``).
    """

    changes: tuple[str, ...] | None = None
    new_nodules: tuple[dict, ...] | None = None
    interval_days: int | None = None
    growth_mm: tuple[float | None, ...] | None = None  # per prior nodule, for "grown" (None: drawn)


@dataclass
class _Patient:
    seed: int
    first_date: _dt.date
    phantoms: list = field(default_factory=list)
    dates: list[_dt.date] = field(default_factory=list)


def _as_round(datasets: list[Dataset], round_index: int, date: _dt.date) -> list[Dataset]:
    """Round attributes on every instance: issuer, study date, a round-specific accession number."""
    da = date.strftime("%Y%m%d")
    for ds in datasets:
        ds.IssuerOfPatientID = ISSUER
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = da
        if round_index > 1:
            ds.AccessionNumber = f"{ds.AccessionNumber}R{round_index}"
    return datasets


def _study_date(datasets: list[Dataset]) -> _dt.date:
    return _dt.datetime.strptime(str(datasets[0].StudyDate), "%Y%m%d").date()


def _draw_changes(rng: np.random.Generator, prior: LdctTruth) -> list[str]:
    changes = []
    for nodule in prior.nodules:
        if nodule.composition == "calcified":
            changes.append("stable")
        elif nodule.malignant:
            changes.append(str(rng.choice(["grown", "stable", "resolved"], p=[0.6, 0.35, 0.05])))
        else:
            changes.append(str(rng.choice(["grown", "stable", "resolved"], p=[0.1, 0.7, 0.2])))
    return changes


def _draw_new_nodules(rng: np.random.Generator) -> list[dict]:
    specs = []
    for _ in range(int(rng.choice([0, 0, 0, 1, 1, 2]))):
        malignant = bool(rng.random() < 0.3)
        composition = str(rng.choice(["solid", "part_solid", "ground_glass"], p=[0.7, 0.15, 0.15]))
        margin = str(rng.choice(["smooth", "lobulated", "spiculated"],
                                p=[0.2, 0.4, 0.4] if malignant else [0.8, 0.15, 0.05]))
        specs.append({"diameter_mm": round(float(rng.uniform(4.0, 10.0)), 2), "composition": composition,
                      "margin": margin, "malignant": malignant})
    return specs


def _body_shift(rng: np.random.Generator, first: LdctPhantom, shapes: list, diameters: list[float | None],
                limit_mm: float = 5.0) -> tuple[float, float, float]:
    """Where the patient lies within the scan window: x, y up to ``limit_mm``; z as far as keeps every
    nodule that stays (with its radius + 2 mm) inside the window."""
    n = first.hu_low.shape[0]
    extent = (n - 1) * first.spacing_mm[0]
    z0 = first.origin_mm[2]
    lo, hi = -limit_mm, limit_mm
    for shape, d in zip(shapes, diameters):
        if d is None:
            continue
        r = d / 2 + 2.0
        lo = max(lo, float(shape.center[2]) + r - z0 - extent)
        hi = min(hi, float(shape.center[2]) - r - z0)
    bz = float(rng.uniform(lo, hi)) if lo <= hi else 0.0
    return (round(float(rng.uniform(-limit_mm, limit_mm)), 2), round(float(rng.uniform(-limit_mm, limit_mm)), 2),
            round(bz, 2))


def ldct_next_round(patient_seed: int, first: LdctPhantom, prior: LdctPhantom, round_index: int,
                    plan: LdctRoundPlan | None = None) -> tuple[LdctPhantom, int]:
    """Round ``round_index`` of the LDCT patient whose first round is ``first`` and previous round
    ``prior``: the phantom (truth completed with the follow-up fields) and the interval in days."""
    plan = plan or LdctRoundPlan()
    rng = np.random.default_rng([patient_seed, 0x5C2E, round_index])
    interval = int(plan.interval_days if plan.interval_days is not None else rng.integers(365, 731))
    changes = list(plan.changes) if plan.changes is not None else _draw_changes(rng, prior.truth)
    if len(changes) != len(prior.truth.nodules):
        raise ValueError(f"changes: {len(changes)} given for {len(prior.truth.nodules)} prior nodules")
    diameters: list[float | None] = []
    for j, (change, nodule) in enumerate(zip(changes, prior.truth.nodules)):
        if change == "resolved":
            diameters.append(None)
        elif change == "grown":
            given = plan.growth_mm[j] if plan.growth_mm is not None else None
            per_year = float(rng.uniform(*GROWTH_PER_YEAR_MM))
            diameters.append(nodule.diameter_mm + (given if given is not None else per_year * interval / 365.0))
        elif change == "stable":
            diameters.append(max(nodule.diameter_mm + float(rng.uniform(-STABLE_MM, STABLE_MM)), 2.0))
        else:
            raise ValueError(f"changes: unknown change {change!r} (grown | stable | resolved)")
    new_specs = list(plan.new_nodules) if plan.new_nodules is not None else _draw_new_nodules(rng)
    body_shift = _body_shift(rng, first, prior.nodule_shapes, diameters)
    table_shift = round(float(rng.choice([-1.0, 1.0]) * rng.uniform(20.0, 60.0)), 2)
    follow_up = LdctFollowUp(round_index=round_index, prior_shapes=prior.nodule_shapes,
                             prior_specs=prior.nodule_specs, diameters_mm=diameters, new_specs=new_specs,
                             body_shift_mm=body_shift, table_shift_mm=table_shift)
    phantom = make_ldct_phantom(patient_seed, first.size, first.truth.dose_fraction, follow_up=follow_up)
    core_fraction = load_program("default").ldct.part_solid_core_fraction
    kept = [j for j, d in enumerate(diameters) if d is not None]
    nodules = []
    for k, truth in enumerate(phantom.truth.nodules):
        measurement = lungrads.NoduleMeasurement(mean_diameter_mm=truth.diameter_mm, composition=truth.composition,
                                                 volume_mm3=truth.volume_mm3)
        if k < len(kept):
            j = kept[k]
            before = prior.truth.nodules[j]
            matched = lungrads.PriorNodule(mean_diameter_mm=before.diameter_mm, interval_days=float(interval))
            growth = round(truth.diameter_mm - before.diameter_mm, 2)
            nodules.append(truth.model_copy(update=dict(
                change=changes[j], prior_index=j, prior_diameter_mm=before.diameter_mm, growth_mm=growth,
                growing=lungrads.is_growing(truth.diameter_mm, matched),
                follow_up_lung_rads=lungrads.follow_up_category(measurement, matched, core_fraction=core_fraction))))
        else:
            nodules.append(truth.model_copy(update=dict(
                change="new", follow_up_lung_rads=lungrads.follow_up_category(measurement, None,
                                                                              core_fraction=core_fraction))))
    phantom.truth = phantom.truth.model_copy(update=dict(
        nodules=nodules, prior_study_instance_uid=prior.truth.study_instance_uid, interval_days=interval,
        resolved=[j for j, d in enumerate(diameters) if d is None]))
    return phantom, interval


def write_rounds(out: Path, mammo: int, ldct: int, seed: int, size: str, rounds: int,
                 ldct_plans: dict[int, dict[int, LdctRoundPlan]] | None = None,
                 ldct_nodules: dict[int, list[dict]] | None = None,
                 interval_cancers: dict[int, bool] | None = None) -> list[Path]:
    """Write ``rounds`` rounds of ``mammo`` exams and ``ldct`` series under ``out``/round-N/.

    Overrides for tests: ``ldct_nodules[i]`` the first-round nodules of LDCT patient i,
    ``ldct_plans[i][r]`` what happens to them by round r, ``interval_cancers[i]`` whether mammography
    patient i has an interval cancer in round 2. Returns the study folders, round by round.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if mammo < 0 or ldct < 0:
        raise ValueError(f"study counts must be >= 0, got mammo={mammo}, ldct={ldct}")
    out = Path(out)
    folders: list[Path] = []
    for i in range(mammo):
        pseed = study_seed(seed, i)
        rng = np.random.default_rng([pseed, 0x5C2E, 0x3A33])
        cancer = (interval_cancers or {}).get(i, bool(rng.random() < INTERVAL_CANCER_RATE))
        date, prior_uid = None, None
        for r in range(1, rounds + 1):
            started = time.perf_counter()
            phantom = make_mammo_phantom(pseed, size, round_index=r, interval_cancer_round=2 if cancer else None)
            datasets = mammo_datasets(phantom)
            interval = None
            if date is None:
                date = _study_date(datasets)
            else:
                interval = int(rng.integers(365, 731))
                date = date + _dt.timedelta(days=interval)
            phantom.truth = phantom.truth.model_copy(update=dict(prior_study_instance_uid=prior_uid,
                                                                 interval_days=interval))
            prior_uid = phantom.truth.study_instance_uid
            folders.append(_write(out / f"round-{r}", f"mg-{i:04d}", _as_round(datasets, r, date), phantom.truth,
                                  started))
    for i in range(ldct):
        pseed = study_seed(seed, i)
        nodules = (ldct_nodules or {}).get(i)
        started = time.perf_counter()
        first = make_ldct_phantom(pseed, size, nodules=nodules)
        datasets = ldct_datasets(first)
        date = _study_date(datasets)
        folders.append(_write(out / "round-1", f"ct-{i:04d}", _as_round(datasets, 1, date), first.truth, started))
        prior = first
        for r in range(2, rounds + 1):
            started = time.perf_counter()
            plan = (ldct_plans or {}).get(i, {}).get(r)
            phantom, interval = ldct_next_round(pseed, first, prior, r, plan)
            date = date + _dt.timedelta(days=interval)
            folders.append(_write(out / f"round-{r}", f"ct-{i:04d}", _as_round(ldct_datasets(phantom), r, date),
                                  phantom.truth, started))
            prior = phantom
    return folders


def _write(round_dir: Path, name: str, datasets: list[Dataset], truth: LdctTruth | MammoTruth,
           started: float) -> Path:
    folder = round_dir / name
    write_series(folder, datasets)
    truth_dir = round_dir / "ground_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / f"{truth.study_instance_uid}.json").write_text(truth.model_dump_json(indent=1))
    _log.info("%s/%s round %d: %s in %.1f s", round_dir.name, name, truth.round, truth.study_instance_uid,
              time.perf_counter() - started)
    return folder
