"""Mammography exam policy: exam score 1-10, BI-RADS density a-d, recall suggestion.

The exam score is the decile of the exam malignancy probability over a reference (phantom)
population, the same idea as commercial 1-10 exam scores: score k means the exam ranks in the k-th
tenth of that population. The nine decile edges are calibrated by the mammography model's training
run and stored in its contract (``calibration: exam_score_edge_1..9``); a program YAML gives
defaults for models whose contract carries none.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oncostream.contracts import Density, MammoCategory
from oncostream.model_contract import load_contract
from oncostream.settings import DEFAULT_MODEL_REPOSITORY
from postprocess.priority import ProgramPolicy

DENSITIES: tuple[Density, ...] = ("a", "b", "c", "d")
_EDGE_KEYS = tuple(f"exam_score_edge_{i}" for i in range(1, 10))


@dataclass(frozen=True)
class ExamScoreEdges:
    """Nine increasing probabilities; ``source`` says where they came from (contract or program)."""

    edges: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.edges) != 9 or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"edges: need 9 strictly increasing values, got {self.edges}")


def exam_score_edges(policy: ProgramPolicy, repository: Path = DEFAULT_MODEL_REPOSITORY) -> ExamScoreEdges:
    """Edges from the classifier contract's calibration when all nine are there, else the program's."""
    try:
        calibration = load_contract("mammo_classifier", repository).calibration
    except (OSError, ValueError):  # no contract yet (or unreadable): the program default is the answer
        calibration = {}
    if all(k in calibration for k in _EDGE_KEYS):
        return ExamScoreEdges(tuple(float(calibration[k]) for k in _EDGE_KEYS), "mammo_classifier contract")
    return ExamScoreEdges(tuple(policy.mammo.exam_score_edges), f"program {policy.name}")


def exam_score(probability: float, edges: ExamScoreEdges) -> int:
    """Decile 1-10: 1 + the number of edges at or below ``probability`` (an edge belongs to the upper decile)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability: {probability} is outside [0, 1]")
    return 1 + bisect.bisect_right(edges.edges, probability)


def density(probabilities: tuple[float, float, float, float]) -> Density:
    """BI-RADS 5th edition breast composition a-d: the most probable class (ties -> the less dense)."""
    if len(probabilities) != 4:
        raise ValueError("probabilities: need four values (a, b, c, d)")
    return DENSITIES[int(np.argmax(np.asarray(probabilities, dtype=np.float64)))]


def recall(score: int, policy: ProgramPolicy) -> bool:
    """Recall is suggested when the exam score reaches the program's threshold."""
    return score >= policy.mammo.recall_exam_score


def mammo_category(exam_probability: float, density_probabilities: tuple[float, float, float, float],
                   policy: ProgramPolicy, edges: ExamScoreEdges) -> MammoCategory:
    """The exam-level category of the TriageEvent."""
    score = exam_score(exam_probability, edges)
    return MammoCategory(exam_score=score, density=density(density_probabilities),
                         malignancy_probability=float(exam_probability), recall=recall(score, policy))
