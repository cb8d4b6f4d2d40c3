"""Program triage policy: a YAML file per screening program, validated by pydantic, and the priority rules.

``postprocess/programs/<program>.yaml`` holds every threshold a program may change (Lung-RADS
category -> priority, exam-score bands, recall and 4X thresholds, when to ask for human review), so
programs differ by configuration, never by code. An invalid file fails loudly at load time.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oncostream.contracts import LungRads, Priority
from oncostream.errors import OncostreamError

PROGRAMS_DIR = Path(__file__).resolve().parent / "programs"


class ProgramPolicyError(OncostreamError):
    """A program's policy file is missing or invalid; ``program`` names it."""

    def __init__(self, program: str, detail: str):
        self.program = program
        super().__init__(f"program {program!r}: {detail}")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LdctPolicy(_Strict):
    size_basis: Literal["diameter", "volume"] = "diameter"
    part_solid_core_fraction: float = Field(default=0.5, gt=0, le=1)
    four_x_probability: float = Field(default=0.85, gt=0, le=1)
    priority: dict[LungRads, Priority]

    @field_validator("priority")
    @classmethod
    def _every_category(cls, value: dict[str, str]) -> dict[str, str]:
        missing = {"0", "1", "2", "3", "4A", "4B", "4X"} - set(value)
        if missing:
            raise ValueError(f"priority: no priority for Lung-RADS categories {sorted(missing)}")
        return value


class MammoPolicy(_Strict):
    exam_score_edges: list[float] = Field(min_length=9, max_length=9)
    recall_exam_score: int = Field(ge=1, le=10)
    priority: dict[Literal["URGENT", "HIGH", "ROUTINE"], int]

    @field_validator("exam_score_edges")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < e < 1.0 for e in value) or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("exam_score_edges: need 9 strictly increasing probabilities in (0, 1)")
        return value

    @field_validator("priority")
    @classmethod
    def _bands(cls, value: dict[str, int]) -> dict[str, int]:
        if set(value) != {"URGENT", "HIGH", "ROUTINE"}:
            raise ValueError("priority: give the lowest exam score for URGENT, HIGH and ROUTINE")
        if not 1 <= value["ROUTINE"] <= value["HIGH"] <= value["URGENT"] <= 10:
            raise ValueError("priority: need 1 <= ROUTINE <= HIGH <= URGENT <= 10")
        return value


class ReviewPolicy(_Strict):
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    max_uncertainty: float = Field(default=0.35, ge=0, le=1)
    incomplete_needs_review: bool = True


# minutes from arrival within which a study of each priority should be read (the worklist's SLA clock)
DEFAULT_SLA_MINUTES: dict[str, int] = {"URGENT": 60, "HIGH": 24 * 60, "ROUTINE": 7 * 24 * 60, "LOW": 30 * 24 * 60}
# seconds from a study's first instance to its triage event at every sink (the pipeline's SLA: the
# burn-rate alerts deploy/generate.py writes); each must be a bucket bound of the latency histogram
DEFAULT_TRIAGE_SLA_SECONDS: dict[str, int] = {"URGENT": 60, "HIGH": 120, "ROUTINE": 600, "LOW": 1800}
_PRIORITY_ORDER = ("URGENT", "HIGH", "ROUTINE", "LOW")


def _check_per_priority(name: str, value: dict[str, int]) -> dict[str, int]:
    if set(value) != set(_PRIORITY_ORDER):
        raise ValueError(f"{name}: give a value for each of {', '.join(_PRIORITY_ORDER)}")
    ordered = [value[p] for p in _PRIORITY_ORDER]
    if any(v <= 0 for v in ordered) or any(b < a for a, b in zip(ordered, ordered[1:])):
        raise ValueError(f"{name}: need 0 < URGENT <= HIGH <= ROUTINE <= LOW")
    return value


class ProgramPolicy(_Strict):
    name: str = Field(min_length=1)
    ldct: LdctPolicy
    mammo: MammoPolicy
    review: ReviewPolicy = ReviewPolicy()
    sla_minutes: dict[Priority, int] = Field(default_factory=lambda: dict(DEFAULT_SLA_MINUTES))
    triage_sla_seconds: dict[Priority, int] = Field(default_factory=lambda: dict(DEFAULT_TRIAGE_SLA_SECONDS))

    @field_validator("sla_minutes")
    @classmethod
    def _sla_for_every_priority(cls, value: dict[str, int]) -> dict[str, int]:
        return _check_per_priority("sla_minutes", value)

    @field_validator("triage_sla_seconds")
    @classmethod
    def _triage_sla_for_every_priority(cls, value: dict[str, int]) -> dict[str, int]:
        return _check_per_priority("triage_sla_seconds", value)

    @property
    def fingerprint(self) -> str:
        """``<name>+<12 hex>`` of every setting that shapes a result: output UIDs derive from it, so a changed
        policy (a 4X threshold, a priority band) never reissues a report under an earlier report's UIDs. The
        deadlines (``sla_minutes``, ``triage_sla_seconds``) change no result and are left out."""
        settings = self.model_dump_json(exclude={"sla_minutes", "triage_sla_seconds"})
        return f"{self.name}+{hashlib.sha256(settings.encode()).hexdigest()[:12]}"

    @model_validator(mode="after")
    def _recall_is_prioritised(self) -> "ProgramPolicy":
        # a suggested recall that lands in the LOW band would be read last: refuse that configuration
        if self.mammo.recall_exam_score < self.mammo.priority["ROUTINE"]:
            raise ValueError("mammo: recall_exam_score is below the ROUTINE band; recalled exams would be LOW")
        return self


def parse_program(text: str, program: str = "<text>") -> ProgramPolicy:
    """Validate one program YAML document."""
    try:
        data = yaml.safe_load(text)
        return ProgramPolicy.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ProgramPolicyError(program, str(exc)) from exc


@lru_cache(maxsize=32)
def load_program(program: str, directory: Path = PROGRAMS_DIR) -> ProgramPolicy:
    """The policy of ``program`` (``programs/<program>.yaml``); unknown programs fall back to ``default``."""
    path = directory / f"{program}.yaml"
    if not path.is_file():
        path = directory / "default.yaml"
        if not path.is_file():
            raise ProgramPolicyError(program, f"no policy file in {directory}")
    policy = parse_program(path.read_text(), program)
    return policy


def ldct_priority(category: LungRads, policy: ProgramPolicy) -> Priority:
    """Priority of an LDCT exam: the program's table from exam Lung-RADS category."""
    return policy.ldct.priority[category]


def mammo_priority(exam_score: int, policy: ProgramPolicy) -> Priority:
    """Priority of a mammography exam: the first band (URGENT, HIGH, ROUTINE) whose lowest score is met."""
    if not 1 <= exam_score <= 10:
        raise ValueError(f"exam_score: {exam_score} is outside 1-10")
    for level in ("URGENT", "HIGH", "ROUTINE"):
        if exam_score >= policy.mammo.priority[level]:
            return level
    return "LOW"


def needs_human_review(confidence: float, uncertainty: float, incomplete: bool, policy: ProgramPolicy) -> bool:
    """Low confidence, high model uncertainty, or (if the program says so) an incomplete study."""
    review = policy.review
    return (confidence < review.min_confidence or uncertainty > review.max_uncertainty
            or (incomplete and review.incomplete_needs_review))

