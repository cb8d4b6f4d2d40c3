"""Program policy YAML (pydantic-validated) and the priority rules it drives."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from postprocess.priority import (
    PROGRAMS_DIR,
    ProgramPolicyError,
    ldct_priority,
    load_program,
    mammo_priority,
    needs_human_review,
    parse_program,
)

DEFAULT_TEXT = (PROGRAMS_DIR / "default.yaml").read_text()


@pytest.fixture(scope="module")
def policy():
    return load_program("default")


def test_default_program_is_valid(policy) -> None:
    assert policy.name == "default"
    assert len(policy.mammo.exam_score_edges) == 9


def test_unknown_program_falls_back_to_default() -> None:
    assert load_program("no-such-program").name == "default"


@pytest.mark.parametrize("category,expected", [
    pytest.param("0", "HIGH", id="default program: Lung-RADS 0 (incomplete) -> HIGH"),
    pytest.param("1", "LOW", id="default program: Lung-RADS 1 -> LOW"),
    pytest.param("2", "LOW", id="default program: Lung-RADS 2 -> LOW"),
    pytest.param("3", "ROUTINE", id="default program: Lung-RADS 3 -> ROUTINE"),
    pytest.param("4A", "HIGH", id="default program: Lung-RADS 4A -> HIGH"),
    pytest.param("4B", "URGENT", id="default program: Lung-RADS 4B -> URGENT"),
    pytest.param("4X", "URGENT", id="default program: Lung-RADS 4X -> URGENT"),
])
def test_ldct_priority(policy, category: str, expected: str) -> None:
    assert ldct_priority(category, policy) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("score,expected", [
    pytest.param(1, "LOW", id="default program: exam score 1 -> LOW"),
    pytest.param(2, "LOW", id="default program: exam score 2 -> LOW"),
    pytest.param(3, "ROUTINE", id="default program: exam score 3 (ROUTINE band starts) -> ROUTINE"),
    pytest.param(7, "ROUTINE", id="default program: exam score 7 -> ROUTINE"),
    pytest.param(8, "HIGH", id="default program: exam score 8 (HIGH band starts) -> HIGH"),
    pytest.param(9, "HIGH", id="default program: exam score 9 -> HIGH"),
    pytest.param(10, "URGENT", id="default program: exam score 10 -> URGENT"),
])
def test_mammo_priority(policy, score: int, expected: str) -> None:
    assert mammo_priority(score, policy) == expected


def test_mammo_priority_refuses_scores_outside_1_to_10(policy) -> None:
    with pytest.raises(ValueError, match="exam_score"):
        mammo_priority(11, policy)


@pytest.mark.parametrize("confidence,uncertainty,incomplete,expected", [
    pytest.param(0.9, 0.1, False, False, id="confident and complete -> no review"),
    pytest.param(0.59, 0.1, False, True, id="confidence below min_confidence -> review"),
    pytest.param(0.9, 0.36, False, True, id="uncertainty above max_uncertainty -> review"),
    pytest.param(0.9, 0.1, True, True, id="incomplete study -> review"),
])
def test_needs_human_review(policy, confidence, uncertainty, incomplete, expected) -> None:
    assert needs_human_review(confidence, uncertainty, incomplete, policy) is expected


def _edited(edit) -> str:
    data = yaml.safe_load(DEFAULT_TEXT)
    edit(data)
    return yaml.safe_dump(data)


INVALID = [
    ("missing Lung-RADS category in the priority table", lambda d: d["ldct"]["priority"].pop("4X"), "4X"),
    ("unknown priority name", lambda d: d["ldct"]["priority"].update({"3": "SOON"}), "priority"),
    ("edges not increasing", lambda d: d["mammo"].update(exam_score_edges=[0.5] * 9), "exam_score_edges"),
    ("eight edges", lambda d: d["mammo"].update(exam_score_edges=[0.1 * i for i in range(1, 9)]), "exam_score_edges"),
    ("bands out of order", lambda d: d["mammo"]["priority"].update(HIGH=10, URGENT=9), "ROUTINE <= HIGH <= URGENT"),
    ("recall below the ROUTINE band", lambda d: d["mammo"].update(recall_exam_score=2), "recall_exam_score"),
    ("unknown key (typo)", lambda d: d["review"].update(min_confidnce=0.5), "min_confidnce"),
    ("4X threshold above 1", lambda d: d["ldct"].update(four_x_probability=1.5), "four_x_probability"),
]


@pytest.mark.parametrize("edit,message", [pytest.param(e, m, id=name) for name, e, m in INVALID])
def test_invalid_program_is_refused_with_the_reason(edit, message: str) -> None:
    with pytest.raises(ProgramPolicyError, match=message):
        parse_program(_edited(edit), "broken")


def test_a_program_file_changes_the_policy(tmp_path: Path) -> None:
    (tmp_path / "strict.yaml").write_text(_edited(lambda d: (d.update(name="strict"),
                                                             d["ldct"]["priority"].update({"3": "HIGH"}))))
    strict = load_program("strict", tmp_path)
    assert ldct_priority("3", strict) == "HIGH"

