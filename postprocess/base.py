"""Sinks are add() + flush() (STYLE.md rule 2): the worker commits offsets only after every sink
has flushed, which is the whole at-least-once story."""

from __future__ import annotations

from abc import ABC, abstractmethod

from oncostream.study import StudyResult


class Sink(ABC):
    name: str
    # True for a sink whose record tells its readers "this study is triaged" (the triage topic, triage.jsonl).
    # The lifecycle hands a result to such sinks only once every other sink (a PACS) has it, so a study that
    # fails delivery and is dead-lettered was never announced as triaged.
    announces_triage: bool = False

    @abstractmethod
    def add(self, result: StudyResult) -> None:
        """Queue one study's outputs; may send eagerly, must not report success before flush()."""

    @abstractmethod
    def flush(self, timeout_s: float = 60.0) -> None:
        """Block until everything added is durably delivered; raise SinkError otherwise."""

    def discard(self, study_instance_uid: str) -> None:  # noqa: B027 - optional hook
        """Stop trying to deliver a study's outputs (it was dead-lettered); later studies must not wait on it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
