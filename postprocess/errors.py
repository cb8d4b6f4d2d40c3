"""Errors raised by postprocessing and sinks."""

from __future__ import annotations

from oncostream.errors import OncostreamError


class SinkError(OncostreamError):
    """A sink could not deliver; the study stays unacknowledged and will be replayed."""

    def __init__(self, sink: str, detail: str):
        self.sink = sink
        super().__init__(f"{sink}: {detail}")
