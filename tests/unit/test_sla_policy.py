"""The program's reading deadlines per priority (ProgramPolicy.sla_minutes), which the worklist's SLA clock uses."""

from __future__ import annotations

import pytest

from postprocess.priority import DEFAULT_SLA_MINUTES, PROGRAMS_DIR, ProgramPolicyError, load_program, parse_program


def _with_sla(sla: str) -> str:
    text = (PROGRAMS_DIR / "default.yaml").read_text()
    head, _, rest = text.partition("sla_minutes:")
    return head + sla + "review:" + rest.partition("review:")[2]


def test_default_program_deadlines() -> None:
    assert load_program("default").sla_minutes == {"URGENT": 60, "HIGH": 1440, "ROUTINE": 10080, "LOW": 43200}
    # a program file without the key gets the same defaults
    assert parse_program(_with_sla("")).sla_minutes == DEFAULT_SLA_MINUTES


@pytest.mark.parametrize("sla, message", [
    ("sla_minutes: {URGENT: 60, HIGH: 1440, ROUTINE: 10080}\n", "each of"),
    ("sla_minutes: {URGENT: 0, HIGH: 1440, ROUTINE: 10080, LOW: 43200}\n", "0 < URGENT"),
    ("sla_minutes: {URGENT: 2000, HIGH: 1440, ROUTINE: 10080, LOW: 43200}\n", "URGENT <= HIGH"),
], ids=["missing-LOW", "zero", "urgent-after-high"])
def test_invalid_deadlines_are_refused(sla: str, message: str) -> None:
    with pytest.raises(ProgramPolicyError, match=message):
        parse_program(_with_sla(sla))


def test_deadlines_do_not_change_output_uids() -> None:
    """Reading deadlines shape no result: the policy fingerprint that output UIDs derive from ignores them."""
    default = parse_program(_with_sla(""))
    slower = parse_program(_with_sla("sla_minutes: {URGENT: 120, HIGH: 2880, ROUTINE: 20160, LOW: 86400}\n"))
    assert slower.sla_minutes != default.sla_minutes
    assert slower.fingerprint == default.fingerprint == load_program("default").fingerprint
