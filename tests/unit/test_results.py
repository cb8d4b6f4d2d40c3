"""build_result: the TriageEvent contract (DESIGN.md, Contracts) for LDCT and mammography studies."""

from __future__ import annotations

import json

import pytest

from oncostream.contracts import TriageEvent
from oncostream.settings import Settings
from postprocess.lungrads import PriorNodule
from postprocess.mammo_policy import exam_score_edges
from postprocess.priority import PROGRAMS_DIR, load_program, parse_program
from postprocess.results import build_result, output_uid
from tests.unit import screening_cases as cases


def test_ldct_event_fields() -> None:
    study = cases.ldct_study()
    event = build_result(study, cases.ldct_inference(), Settings(), now=cases.NOW).event
    assert (event.modality, event.program, event.study_instance_uid) == ("CT", "default", study.study_instance_uid)
    assert event.accession_number == study.datasets[0].AccessionNumber
    assert (event.arrived_at, event.triaged_at) == (cases.ARRIVED, cases.NOW)
    assert event.model_versions == cases.LDCT_VERSIONS
    assert event.patient_id is None  # identifiers only when the program allows them
    truth = cases.ldct_phantom().truth.nodules
    for finding, nodule in zip(event.findings, truth):
        assert finding.center_mm == pytest.approx(nodule.center_mm, abs=0.005)
        assert finding.mean_diameter_mm == pytest.approx(nodule.diameter_mm, abs=0.05)
        assert finding.composition == nodule.composition
    # the JSON line is the contract other tools read
    line = json.loads(event.model_dump_json())
    assert {"schema_version", "category", "findings", "confidence", "needs_human_review", "sr_sop_instance_uid",
            "seg_sop_instance_uids", "arrived_at", "triaged_at"} <= set(line)
    assert TriageEvent.model_validate_json(event.model_dump_json()) == event


def test_patient_id_only_when_allowed() -> None:
    study = cases.ldct_study()
    event = build_result(study, cases.ldct_inference(), Settings(allow_patient_identifiers=True), now=cases.NOW).event
    assert event.patient_id == study.datasets[0].PatientID


def test_incomplete_study_is_copied_and_reviewed() -> None:
    study = cases.ldct_study(incomplete=True)
    event = build_result(study, cases.ldct_inference(nodules=False), Settings(), now=cases.NOW).event
    assert event.incomplete and event.missing == ["slices 40-47"]
    assert event.category.lung_rads == "0" and event.needs_human_review and event.priority == "HIGH"
    # an actionable nodule is still reported as such on an incomplete exam
    event = build_result(study, cases.ldct_inference(probabilities=(0.1,)), Settings(), now=cases.NOW).event
    assert event.category.lung_rads == "4A" and event.needs_human_review


def test_confidence_follows_uncertainty() -> None:
    study = cases.mammo_study()
    sure = build_result(study, cases.mammo_inference(study, uncertainty=0.1), Settings(), now=cases.NOW).event
    unsure = build_result(study, cases.mammo_inference(study, uncertainty=0.5), Settings(), now=cases.NOW).event
    assert (sure.confidence, sure.needs_human_review) == (0.9, False)
    assert (unsure.confidence, unsure.needs_human_review) == (0.5, True)


def test_mammo_event_fields() -> None:
    study = cases.mammo_study()
    # above the top decile edge of whichever calibration is committed: the exam score must be 10
    top_edge = exam_score_edges(load_program("default")).edges[-1]
    probability = round((top_edge + 1.0) / 2, 4)
    event = build_result(study, cases.mammo_inference(study, exam_probability=probability), Settings(),
                         now=cases.NOW).event
    assert event.modality == "MG" and event.seg_sop_instance_uids == []
    assert event.category.density == "c" and event.category.malignancy_probability == probability
    assert event.category.exam_score == 10 and event.category.recall and event.priority == "URGENT"
    lesion = cases.mammo_phantom().truth.lesions[0]
    assert [(f.sop_instance_uid, f.center_px, f.bbox_px) for f in event.findings] == \
        [(v.sop_instance_uid, v.center_px, v.bbox_px) for v in lesion.views]
    assert {f.laterality for f in event.findings} == {lesion.laterality}


def test_priors_switch_to_follow_up_rules() -> None:
    study = cases.ldct_study()
    stable = [PriorNodule(d.diameter_mm) for d in cases.ldct_phantom().truth.nodules]
    inference = cases.ldct_inference(probabilities=(0.1,))
    baseline = build_result(study, inference, Settings(), now=cases.NOW).event
    follow_up = build_result(study, inference, Settings(), now=cases.NOW, priors=stable).event
    assert baseline.findings[0].lung_rads == "4A"  # 11 mm solid at baseline
    assert follow_up.findings[0].lung_rads == "3"  # v2022: stable 4A at follow-up -> 3


def test_unknown_inference_type_is_refused() -> None:
    with pytest.raises(TypeError, match="inference"):
        build_result(cases.ldct_study(), object(), Settings())  # type: ignore[arg-type]


def test_a_changed_program_policy_gives_new_output_uids() -> None:
    study, inference = cases.ldct_study(), cases.ldct_inference()
    policy = load_program("default")
    result = build_result(study, inference, Settings(), now=cases.NOW)
    assert str(result.sr.SOPInstanceUID) == output_uid(study, inference.model_versions, policy, "sr")
    assert result.event.seg_sop_instance_uids == [output_uid(study, inference.model_versions, policy, "seg")]
    # a program that moves its 4X threshold reports other categories: never under the same UIDs
    stricter = parse_program((PROGRAMS_DIR / "default.yaml").read_text().replace(
        "four_x_probability: 0.85", "four_x_probability: 0.80"))
    assert stricter.fingerprint != policy.fingerprint
    assert stricter.fingerprint == parse_program((PROGRAMS_DIR / "default.yaml").read_text().replace(
        "four_x_probability: 0.85", "four_x_probability: 0.80")).fingerprint
    assert output_uid(study, inference.model_versions, stricter, "sr") != result.sr.SOPInstanceUID


def test_output_uids_follow_the_input_instances_not_their_order() -> None:
    import copy

    study, inference = cases.ldct_study(), cases.ldct_inference()
    policy = load_program("default")
    uid = output_uid(study, inference.model_versions, policy, "sr")
    reordered = copy.copy(study)
    reordered.datasets = list(reversed(study.datasets))
    assert output_uid(reordered, inference.model_versions, policy, "sr") == uid, "a replay gives the same UIDs"
    fewer = copy.copy(study)
    fewer.datasets = study.datasets[:-1]
    # a part of the study processed on its own (a late resend) never reuses the whole study's UIDs
    assert output_uid(fewer, inference.model_versions, policy, "sr") != uid
