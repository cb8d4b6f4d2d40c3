"""Source: the one interface every ingest source (directory, Kafka, gateway) implements.

A source yields raw DICOM bytes with where they came from; parsing, validation and routing happen
downstream, so a broken file never stops a source.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class SourceMessage:
    """One received DICOM instance, still undecoded.

    ``origin`` names the file path, or ``topic/partition/offset`` for Kafka, so rejections can say
    which input they refer to without quoting any PHI.
    """

    data: bytes
    origin: str
    headers: dict[str, str] = field(default_factory=dict)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class Source(ABC):
    """An iterable of SourceMessage; ``close`` releases files, consumers and sockets."""

    @abstractmethod
    def __iter__(self) -> Iterator[SourceMessage]:
        """Yield every available message, in a deterministic order where the source has one."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds; the default source holds nothing."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
