"""Acceptance (issue 17): a two-round synthetic cohort streamed through the Kafka worker gets follow-up
categories on round 2, its priors found through the results store (SQLite) and, for a cohort whose
round 1 lives only in the PACS (Orthanc), through the PACS query.

Round 1 of LDCT patient 0 has a 10 mm and a 9 mm solid nodule (both Lung-RADS 4A at baseline) and a
7 mm one; by round 2 (400 days later, the patient lying 20-60 mm elsewhere on the table) the first
is stable, the second grew by 4 mm, the third resolved, and a 6.5 mm nodule is new. v2022: the stable
4A becomes 3, the grown one is upgraded (4B at 13 mm), the new solid one is 4A or 4B by its size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pydicom
import pytest

from oncostream.app.pipeline import Pipeline, delivery_sinks, make_backend
from oncostream.app.worker import Worker
from oncostream.streaming import produce_files
from oncostream.synth.rounds import LdctRoundPlan, write_rounds
from tests.fixtures.kafka import run_until_published

pytestmark = pytest.mark.integration

WAIT_S = 240.0
KEY = "acceptance-test-pseudonym-key-0001"
NODULES = [{"diameter_mm": 10.0, "composition": "solid", "margin": "smooth", "malignant": False},
           {"diameter_mm": 9.0, "composition": "solid", "margin": "smooth", "malignant": False},
           {"diameter_mm": 7.0, "composition": "solid", "margin": "smooth", "malignant": False}]
PLAN = LdctRoundPlan(changes=("stable", "grown", "resolved"), interval_days=400, growth_mm=(None, 4.0, None),
                     new_nodules=({"diameter_mm": 6.5, "composition": "solid", "margin": "smooth",
                                   "malignant": False},))


def _cohort(root: Path, seed: int, mammo: int) -> Path:
    write_rounds(root, mammo=mammo, ldct=1, seed=seed, size="small", rounds=2, ldct_plans={0: {2: PLAN}},
                 ldct_nodules={0: NODULES}, interval_cancers={0: True})
    return root


def _files(round_dir: Path) -> list[Path]:
    return sorted(p for folder in sorted(round_dir.iterdir()) if folder.name != "ground_truth"
                  for p in sorted(folder.glob("*.dcm")))


def _uid(round_dir: Path, prefix: str) -> str:
    (path, *_) = sorted((round_dir / prefix).glob("*.dcm"))
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def backend():
    from oncostream.settings import Settings

    backend = make_backend(Settings())
    yield backend
    backend.close()


def _stream(topics, files: list[Path], settings, backend, count: int) -> dict[str, dict]:
    """Produce ``files`` and run a worker (the served pipeline, the sinks `oncostream worker` adds) until
    it published ``count`` studies; the triage events by StudyInstanceUID."""
    produce_files(files, settings, topics.bootstrap)
    worker = run_until_published(Worker(settings, topics.bootstrap, topics.dicom, Pipeline(settings, backend),
                                        delivery_sinks(settings), max_studies=count), WAIT_S)
    assert worker.published == count, f"published {worker.published} of {count}"
    return {e["study_instance_uid"]: e for e in (json.loads(r.value) for r in topics.read(topics.triage))}


def _by_truth(event: dict, truth_path: Path) -> list[dict | None]:
    """The reported finding at each true nodule (centre within max(half the diameter, 3 mm)), in truth order."""
    truth = json.loads(truth_path.read_text())["nodules"]
    out = []
    for nodule in truth:
        near = [f for f in event["findings"]
                if math.dist(f["center_mm"], nodule["center_mm"]) <= max(0.5 * nodule["diameter_mm"], 3.0)]
        out.append(min(near, key=lambda f: math.dist(f["center_mm"], nodule["center_mm"])) if near else None)
    return out


def _assert_follow_up(cohort: Path, events: dict[str, dict]) -> None:
    uid1, uid2 = _uid(cohort / "round-1", "ct-0000"), _uid(cohort / "round-2", "ct-0000")
    first, second = events[uid1], events[uid2]
    ten, nine, seven = _by_truth(first, cohort / "round-1" / "ground_truth" / f"{uid1}.json")
    stable, grown, new = _by_truth(second, cohort / "round-2" / "ground_truth" / f"{uid2}.json")
    assert ten["lung_rads"] == nine["lung_rads"] == "4A", first["findings"]
    assert second["prior_study_instance_uid"] == uid1
    assert second["prior_interval_days"] == 400 and second["category"]["compared_with_prior"]
    # the stable 4A is categorised 3, and is the same nodule (tracking UID carried over)
    assert stable["lung_rads"] == "3" and stable["growing"] is False, second["findings"]
    assert stable["tracking_uid"] == stable["prior_tracking_uid"] == ten["tracking_uid"]
    # the grown one is upgraded (4B at 13 mm, or 4X)
    assert grown["growing"] is True and grown["lung_rads"] in ("4B", "4X"), second["findings"]
    assert grown["prior_tracking_uid"] == nine["tracking_uid"]
    assert grown["diameter_change_mm"] > 1.5 and grown["volume_doubling_time_days"] > 0
    # the resolved one is matched to nothing; the new one has no prior
    assert seven["tracking_uid"] not in {f["prior_tracking_uid"] for f in second["findings"]}
    # a new solid nodule: 4A at 6-8 mm, 4B at 8 mm or more (small phantoms' 2.65 mm pixels read it larger)
    assert new["prior_tracking_uid"] is None and new["growing"] is None and new["lung_rads"] in ("4A", "4B", "4X")
    assert second["category"]["lung_rads"] in ("4B", "4X") and second["priority"] == "URGENT"


def test_round_two_follow_up_with_priors_from_the_store(kafka_topics_factory, backend, tmp_path):
    cohort = _cohort(tmp_path / "cohort", seed=170, mammo=1)
    topics = kafka_topics_factory(1)
    settings = topics.settings(pseudonym_key=KEY, store_url=f"sqlite:///{tmp_path / 'results.db'}")
    round1 = _stream(topics, _files(cohort / "round-1"), settings, backend, 2)
    events = _stream(topics, _files(cohort / "round-2"), settings, backend, 2)
    ct1 = _uid(cohort / "round-1", "ct-0000")
    assert round1[ct1]["prior_study_instance_uid"] is None
    assert not round1[ct1]["category"]["compared_with_prior"]
    _assert_follow_up(cohort, events)
    mg1, mg2 = _uid(cohort / "round-1", "mg-0000"), _uid(cohort / "round-2", "mg-0000")
    category = events[mg2]["category"]
    assert events[mg2]["prior_study_instance_uid"] == mg1 and category["compared_with_prior"]
    assert category["prior_exam_score"] == events[mg1]["category"]["exam_score"]
    assert all(f["new_since_prior"] is not None for f in events[mg2]["findings"])
    # the store never holds the patient in clear
    raw = (tmp_path / "results.db").read_bytes()
    patient_id = str(pydicom.dcmread(_files(cohort / "round-1")[0], stop_before_pixels=True).PatientID)
    assert patient_id.encode() not in raw


def test_round_two_follow_up_with_round_one_only_in_the_pacs(kafka_topics_factory, backend, orthanc_empty,
                                                             tmp_path):
    cohort = _cohort(tmp_path / "cohort", seed=170, mammo=0)  # the same patient, read elsewhere first
    topics = kafka_topics_factory(1)
    pacs = dict(pacs_address=orthanc_empty.env["ORTHANC_DICOM"], pacs_called_ae=orthanc_empty.extra["ae_title"])
    # round 1 was read elsewhere: its reports went to the PACS, its results store is not ours
    elsewhere = topics.settings(pseudonym_key=KEY, store_url=f"sqlite:///{tmp_path / 'elsewhere.db'}", **pacs)
    _stream(topics, _files(cohort / "round-1"), elsewhere, backend, 1)
    ours = topics.settings(pseudonym_key=KEY, store_url=f"sqlite:///{tmp_path / 'results.db'}",
                           prior_query_pacs=True, **pacs)
    events = _stream(topics, _files(cohort / "round-2"), ours, backend, 1)
    _assert_follow_up(cohort, events)
