"""DirectorySource: every file under a folder, recursively, as SourceMessages.

Files are not checked for being DICOM here: parse_instance rejects them with a reason, so a stray
file becomes a dead-letter record rather than disappearing silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.base import Source, SourceMessage


class DirectorySource(Source):
    """Yields every regular file under ``root`` in sorted path order.

    Skips ``*.json`` (ground-truth sidecars written by ``oncostream synth``) and hidden files or
    folders (editor and OS droppings such as ``.DS_Store``).
    """

    def __init__(self, root: Path):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root: {root} is not a directory")
        self.root = root

    def paths(self) -> list[Path]:
        """The files this source will yield, in order."""
        found = []
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.suffix.lower() == ".json" or not path.is_file():
                continue
            found.append(path)
        return sorted(found)

    def __iter__(self) -> Iterator[SourceMessage]:
        for path in self.paths():
            yield SourceMessage(data=path.read_bytes(), origin=str(path))
