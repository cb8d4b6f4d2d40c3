"""Follow-up half of ``oncostream eval --rounds 2``: two screening rounds of fresh synthetic patients
through the served pipeline, the second compared with the first, scored against the rounds' truth.

Each patient's round 1 and round 2 (oncostream/synth/rounds.py: the patient 20-60 mm elsewhere on
the table, nodules grown / stable / resolved / new, 12-24 months apart) are written as DICOM, assembled
(ingest/assembly.py, the patient pseudonym included) and processed by ``Pipeline.process`` with a
prior lookup on a results store (oncostream/store, SQLite, as the service runs it) that holds the
patient's round-1 result: the served path, priors and their look-back candidates included.

Matching to truth as in ldct.py (centre within max(0.5 x true diameter, 3 mm)). Over round 2:

- ``followup_lungrads_agreement_ge6mm``: share of true nodules >= 6 mm that were found whose reported
  Lung-RADS category equals the true follow-up category (synth truth: v2022 follow-up rules on the
  true sizes and match, before 4X). A reported 4X agrees when the true category is 3, 4A or 4B (4X
  upgrades exactly those; whether it should is the malignancy model's AUC, measured elsewhere);
  ``..._all``: the same with missed nodules counted as disagreements;
- ``followup_growth_sensitivity``: share of truly growing nodules (v2022 growth on the true sizes)
  reported with ``growing: true`` (missed ones count as not called);
  ``followup_growth_missed_*``: why each uncalled one was missed (``not_found`` in round 2,
  ``prior_not_found``: the round-1 read did not report it and no look-back candidate matched, so it was
  read as new; ``retrospect_not_growing``: the round-1 read did not report it, a look-back candidate
  matched but the growth measured against it was not above 1.5 mm a year; ``unmatched`` to its prior,
  ``below_threshold``: matched but measured growth not above 1.5 mm a year);
  ``followup_growth_called_in_retrospect``: truly growing nodules called growing against a look-back
  candidate (the round-1 read had not reported them);
- ``followup_false_growth_per_scan``: reported ``growing: true`` findings that are not a truly growing
  nodule, per round-2 scan; ``followup_false_growth_in_retrospect``: how many of those (in all) were
  measured against a look-back candidate;
- ``followup_match_accuracy``: of found nodules that existed in round 1 and were found there too, the
  share whose ``prior_tracking_uid`` is the tracking UID of that same nodule's round-1 finding;
- ``followup_alignment_error_mm_median``: |lung-centroid difference - true translation| (mm);
- ``mammo_interval_cancer_flagged``: round-2 exams with an interval cancer where a finding flagged
  ``new_since_prior`` lies on it; ``mammo_new_flags_per_exam``: ``new_since_prior`` flags per round-2
  exam without an interval cancer (every one is a false new-finding flag).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oncostream.contracts import MammoFinding, NoduleFinding, TriageEvent
from oncostream.evaluation import with_progress
from oncostream.evaluation.ldct import match_detections
from oncostream.evaluation.stats import bootstrap_ci95
from oncostream.settings import Settings
from oncostream.store import ResultsStore
from postprocess.followup import seen_in_retrospect

DEFAULT_ROUNDS_FIRST_SEED = 3_000_000  # training 0-99,999; eval 1,000,000+; pooled 2,000,000+
DEFAULT_ROUNDS_PATIENTS = 30
REPORTABLE_MM = 6.0
_EVAL_KEY = "oncostream-eval-rounds-pseudonym-key"  # a throwaway secret: these patients are synthetic
CI_KEYS = ("followup_lungrads_agreement_ge6mm", "followup_growth_sensitivity", "followup_false_growth_per_scan")


@dataclass
class _Patient:
    truth1: dict
    truth2: dict
    event1: TriageEvent
    event2: TriageEvent


def _assemble(folder: Path, settings: Settings):
    from pydicom import dcmread

    from ingest.assembly import Assembler

    assembler = Assembler(settings)
    studies = []
    for path in sorted(folder.glob("*.dcm")):
        studies += assembler.add(dcmread(path))
    studies += assembler.flush_all()
    (study,) = studies
    study.arrived_at = datetime.now(timezone.utc)
    return study


def _truth(round_dir: Path, uid: str) -> dict:
    import json

    return json.loads((round_dir / "ground_truth" / f"{uid}.json").read_text())


def _process_patient(out: Path, prefix: str, pipeline, store: ResultsStore, settings: Settings) -> _Patient:
    events, truths = [], []
    for r in (1, 2):
        study = _assemble(out / f"round-{r}" / prefix, settings)
        result = pipeline.process(study)
        store.record(result)  # as the store sink writes it: round 2's prior is read back from the store
        events.append(result.event)
        truths.append(_truth(out / f"round-{r}", study.study_instance_uid))
    return _Patient(truths[0], truths[1], events[0], events[1])


def _hits(event: TriageEvent, truth: dict) -> tuple[list[NoduleFinding], np.ndarray]:
    found = [f for f in event.findings if isinstance(f, NoduleFinding)]
    nodules = truth["nodules"]
    hits = match_detections(np.array([f.center_mm for f in found]).reshape(-1, 3),
                            np.array([f.malignancy_probability for f in found]),
                            np.array([n["center_mm"] for n in nodules]).reshape(-1, 3),
                            np.array([n["diameter_mm"] for n in nodules]))
    return found, hits


def _agrees(reported: str, true: str | None) -> bool:
    return reported == true or (reported == "4X" and true in ("3", "4A", "4B"))


def followup_metrics(patients: list[_Patient]) -> dict:
    agree = found_ge6 = all_ge6 = 0
    growing_true = growing_called = false_growth = 0
    tracked = tracked_right = 0
    missed = {"not_found": 0, "prior_not_found": 0, "retrospect_not_growing": 0, "unmatched": 0,
              "below_threshold": 0}
    called_in_retrospect = false_in_retrospect = 0
    for p in patients:
        found2, hits2 = _hits(p.event2, p.truth2)
        found1, hits1 = _hits(p.event1, p.truth1)
        tracking_of_truth1 = {int(j): found1[i].tracking_uid for i, j in enumerate(hits1) if j >= 0}
        by_truth = {int(j): found2[i] for i, j in enumerate(hits2) if j >= 0}
        for j, nodule in enumerate(p.truth2["nodules"]):
            finding = by_truth.get(j)
            if nodule["diameter_mm"] >= REPORTABLE_MM:
                all_ge6 += 1
                if finding is not None:
                    found_ge6 += 1
                    agree += _agrees(finding.lung_rads, nodule["follow_up_lung_rads"])
            if nodule["growing"]:
                growing_true += 1
                growing_called += bool(finding is not None and finding.growing)
                called_in_retrospect += bool(finding is not None and finding.growing and seen_in_retrospect(finding))
                if finding is None:
                    missed["not_found"] += 1
                elif not finding.growing and nodule["prior_index"] not in tracking_of_truth1:
                    # the round-1 read missed it: looked back at, but not growing enough; or read as new
                    missed["retrospect_not_growing" if seen_in_retrospect(finding) else "prior_not_found"] += 1
                elif not finding.growing and finding.prior_tracking_uid is None:
                    missed["unmatched"] += 1
                elif not finding.growing:
                    missed["below_threshold"] += 1  # matched, measured growth <= 1.5 mm a year
            if finding is not None and nodule["prior_index"] is not None and nodule["prior_index"] in tracking_of_truth1:
                tracked += 1
                tracked_right += finding.prior_tracking_uid == tracking_of_truth1[nodule["prior_index"]]
        for i, finding in enumerate(found2):
            if finding.growing and not (hits2[i] >= 0 and p.truth2["nodules"][int(hits2[i])]["growing"]):
                false_growth += 1
                false_in_retrospect += seen_in_retrospect(finding)
    nan = float("nan")
    return {
        "followup_lungrads_agreement_ge6mm": agree / found_ge6 if found_ge6 else nan,
        "followup_lungrads_agreement_ge6mm_all": agree / all_ge6 if all_ge6 else nan,
        "followup_growth_sensitivity": growing_called / growing_true if growing_true else nan,
        "followup_false_growth_per_scan": false_growth / len(patients) if patients else nan,
        "followup_match_accuracy": tracked_right / tracked if tracked else nan,
        "followup_nodules_ge6mm": all_ge6, "followup_nodules_ge6mm_found": found_ge6,
        "followup_growing_nodules": growing_true,
        "followup_growth_called_in_retrospect": called_in_retrospect,
        "followup_false_growth_in_retrospect": false_in_retrospect,
        **{f"followup_growth_missed_{why}": count for why, count in missed.items()},
    }


def _alignment_error(p: _Patient) -> float:
    c1, c2 = p.event1.lung_centroid_mm, p.event2.lung_centroid_mm
    if c1 is None or c2 is None or p.truth2.get("translation_mm") is None:
        return float("nan")
    return float(np.linalg.norm(np.subtract(c2, c1) - np.asarray(p.truth2["translation_mm"])))


def _on(finding: MammoFinding, lesion: dict) -> bool:
    for view in lesion["views"]:
        r0, c0, r1, c1 = view["bbox_px"]
        row, col = finding.center_px
        if view["sop_instance_uid"] == finding.sop_instance_uid and r0 <= row < r1 and c0 <= col < c1:
            return True
    return False


def evaluate_followup(seeds: range, size: str, mammo: bool = True) -> dict:
    """Follow-up metrics over patients ``seeds`` (one LDCT patient and one mammography patient per seed)."""
    from oncostream.app.pipeline import Pipeline, make_backend
    from oncostream.app.priors import PriorLookup
    from oncostream.store import open_store
    from oncostream.synth.rounds import write_rounds

    settings = Settings(pseudonym_key=_EVAL_KEY)
    patients, mammo_pairs = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oncostream-eval-rounds-") as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'results.db'}")
        try:
            pipeline = Pipeline(settings, make_backend(settings), prior_lookup=PriorLookup(store=store))
            for seed in with_progress(seeds, "screening-round patients", every=5):
                out = Path(tmp) / str(seed)
                write_rounds(out, mammo=1 if mammo else 0, ldct=1, seed=seed, size=size, rounds=2)
                patients.append(_process_patient(out, "ct-0000", pipeline, store, settings))
                if mammo:
                    mammo_pairs.append(_process_patient(out, "mg-0000", pipeline, store, settings))
        finally:
            store.close()
    results = followup_metrics(patients)
    results.update(bootstrap_ci95(len(patients), lambda idx: followup_metrics([patients[i] for i in idx]), CI_KEYS))
    errors = [e for e in map(_alignment_error, patients) if np.isfinite(e)]
    results["followup_alignment_error_mm_median"] = float(np.median(errors)) if errors else float("nan")
    results["followup_alignment_error_mm_max"] = float(np.max(errors)) if errors else float("nan")
    results["n_followup_patients"] = len(patients)
    results["followup_seconds_per_patient"] = (time.perf_counter() - started) / max(len(seeds), 1)
    if mammo_pairs:
        cancers = [p for p in mammo_pairs if any(les["new_since_prior"] for les in p.truth2["lesions"])]
        flagged = sum(any(f.new_since_prior and _on(f, les) for f in p.event2.findings
                          for les in p.truth2["lesions"] if les["new_since_prior"]) for p in cancers)
        others = [p for p in mammo_pairs if p not in cancers]
        results["mammo_interval_cancers"] = len(cancers)
        results["mammo_interval_cancer_flagged"] = flagged / len(cancers) if cancers else float("nan")
        results["mammo_new_flags_per_exam"] = (sum(bool(f.new_since_prior) for p in others for f in p.event2.findings)
                                               / len(others) if others else float("nan"))
    return results
