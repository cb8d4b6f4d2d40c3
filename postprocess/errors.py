"""Errors raised by postprocessing and sinks."""

from __future__ import annotations

from oncostream.errors import OncostreamError


class SinkError(OncostreamError):
    """A sink could not deliver; the study stays unacknowledged.

    ``permanent``: the receiver refused the objects and sending them again will not help (the study is
    dead-lettered with this reason and the sink has dropped it, so later studies flow); otherwise the
    failure may clear and the caller retries. ``studies`` names the StudyInstanceUIDs it concerns
    (empty: every study added since the last successful flush).
    """

    def __init__(self, sink: str, detail: str, permanent: bool = False, studies: tuple[str, ...] = ()):
        self.sink = sink
        self.detail = detail
        self.permanent = permanent
        self.studies = tuple(studies)
        super().__init__(f"{sink}: {detail}")
