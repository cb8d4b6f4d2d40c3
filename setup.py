"""Packaging hook (pyproject.toml holds everything else): the wheel carries the checkout's top-level
data, which oncostream.settings finds under ``oncostream/_data/`` once installed.

The top-level layout is fixed (DESIGN.md): ``model_repository/`` and ``docs/`` are not Python packages,
so ``package-data`` cannot name them; ``build_py`` copies them next to the modules instead. An
editable install reads the checkout itself and copies nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# checkout path -> path under oncostream/_data/ in the wheel (same relative path: settings.DATA_ROOT)
PACKAGED_DATA = ("model_repository", "docs/triage_event.schema.json")
_NOT_DATA = shutil.ignore_patterns("__pycache__", "*.pyc", "*.plan", ".*")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "oncostream" / "_data"
        for relative in PACKAGED_DATA:
            source, destination = ROOT / relative, target / relative
            if source.is_dir():
                shutil.rmtree(destination, ignore_errors=True)
                shutil.copytree(source, destination, ignore=_NOT_DATA)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildPyWithData})
