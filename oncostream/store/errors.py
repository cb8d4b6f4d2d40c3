"""Errors of the results store."""

from __future__ import annotations

from oncostream.errors import OncostreamError


class StoreError(OncostreamError):
    """The results store could not do what was asked. ``transient``: the database could not be reached or
    was busy, and the same call may succeed later; otherwise the request itself was refused."""

    def __init__(self, detail: str, transient: bool = False):
        self.detail = detail
        self.transient = transient
        super().__init__(detail)
