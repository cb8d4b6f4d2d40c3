"""Mammography policy: exam score deciles, BI-RADS density, recall."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from postprocess.mammo_policy import ExamScoreEdges, density, exam_score, exam_score_edges, mammo_category, recall
from postprocess.priority import load_program

EDGES = ExamScoreEdges((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "test")


@pytest.fixture(scope="module")
def policy():
    return load_program("default")


@pytest.mark.parametrize("probability,expected", [
    pytest.param(0.0, 1, id="decile: lowest probability -> score 1"),
    pytest.param(0.0999, 1, id="decile: just below edge 1 -> 1"),
    pytest.param(0.1, 2, id="decile: an edge belongs to the upper decile -> 2"),
    pytest.param(0.55, 6, id="decile: between edges 5 and 6 -> 6"),
    pytest.param(0.8999, 9, id="decile: just below edge 9 -> 9"),
    pytest.param(0.9, 10, id="decile: at edge 9 -> 10"),
    pytest.param(1.0, 10, id="decile: certainty -> 10"),
])
def test_exam_score_is_the_decile(probability: float, expected: int) -> None:
    assert exam_score(probability, EDGES) == expected


def test_exam_score_refuses_non_probabilities() -> None:
    with pytest.raises(ValueError, match="probability"):
        exam_score(1.2, EDGES)


def test_edges_must_increase() -> None:
    with pytest.raises(ValueError, match="edges"):
        ExamScoreEdges((0.1,) * 9, "bad")


def _repository(tmp_path: Path, calibration: dict[str, float]) -> Path:
    folder = tmp_path / "mammo_classifier"
    folder.mkdir()
    (folder / "contract.yaml").write_text(yaml.safe_dump({
        "name": "mammo_classifier", "version": "1", "task": "test", "preprocessing": "none",
        "inputs": [{"name": "image", "dtype": "FP32", "shape": [-1, 1, 64, 64]}],
        "outputs": [{"name": "score", "dtype": "FP32", "shape": [-1, 1]}],
        "calibration": calibration}))
    return tmp_path


def test_edges_come_from_the_classifier_contract_when_present(tmp_path: Path, policy) -> None:
    calibration = {f"exam_score_edge_{i}": i / 20 for i in range(1, 10)}
    edges = exam_score_edges(policy, _repository(tmp_path, calibration))
    assert edges.edges == tuple(i / 20 for i in range(1, 10))
    assert edges.source == "mammo_classifier contract"


def test_edges_fall_back_to_the_program_when_the_contract_has_none(tmp_path: Path, policy) -> None:
    edges = exam_score_edges(policy, _repository(tmp_path, {"exam_score_edge_1": 0.1}))  # incomplete set
    assert edges.edges == tuple(policy.mammo.exam_score_edges)
    assert edges.source == "program default"


def test_edges_fall_back_when_there_is_no_contract(tmp_path: Path, policy) -> None:
    assert exam_score_edges(policy, tmp_path).source == "program default"


@pytest.mark.parametrize("probabilities,expected", [
    pytest.param((0.7, 0.1, 0.1, 0.1), "a", id="BI-RADS density a = argmax"),
    pytest.param((0.1, 0.6, 0.2, 0.1), "b", id="BI-RADS density b = argmax"),
    pytest.param((0.1, 0.2, 0.6, 0.1), "c", id="BI-RADS density c = argmax"),
    pytest.param((0.0, 0.1, 0.2, 0.7), "d", id="BI-RADS density d = argmax"),
    pytest.param((0.4, 0.4, 0.1, 0.1), "a", id="tie -> the less dense class"),
])
def test_density(probabilities, expected: str) -> None:
    assert density(probabilities) == expected


@pytest.mark.parametrize("score,expected", [
    pytest.param(7, False, id="default program: exam score 7 -> no recall"),
    pytest.param(8, True, id="default program: exam score 8 (recall_exam_score) -> recall"),
    pytest.param(10, True, id="default program: exam score 10 -> recall"),
])
def test_recall(policy, score: int, expected: bool) -> None:
    assert recall(score, policy) is expected


def test_category(policy) -> None:
    category = mammo_category(0.95, (0.1, 0.2, 0.6, 0.1), policy, EDGES)
    assert (category.exam_score, category.density, category.recall, category.malignancy_probability) == \
        (10, "c", True, 0.95)
