"""The import layers of DESIGN.md, checked on the source (AST) of every module:

- ``ingest`` and ``postprocess`` import only the core (``oncostream`` minus the application layer and
  the top-level tools), never each other;
- the core never imports the application layer ``oncostream.app``.
Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the application layer and the top-level tools built on it (DESIGN.md, layout)
APPLICATION = ("oncostream.app", "oncostream.cli", "oncostream.synth", "oncostream.evaluation",
               "oncostream.model_build", "oncostream.stack")
# stage packages: each may import only the core (and itself)
STAGES = ("ingest", "postprocess")
# core modules that must stay below the stages too (contracts and the settings every stage shares)
CORE = ("oncostream.contracts", "oncostream.settings", "oncostream.errors", "oncostream.study",
        "oncostream.uids", "oncostream.metrics", "oncostream.model_contract")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}" if base == "oncostream" else base) for alias in node.names]
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(path: Path) -> list[str]:
    me = module_name(path)
    bad = []
    for line, target in imports(path):
        stage = next((s for s in STAGES if within(me, (s,))), None)
        if stage is not None:
            other_stages = tuple(s for s in STAGES if s != stage)
            if within(target, other_stages) or within(target, APPLICATION):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
        elif within(me, CORE) and within(target, (*STAGES, *APPLICATION)):
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
        elif within(me, ("oncostream",)) and not within(me, APPLICATION) and within(target, ("oncostream.app",)):
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


def checked_modules() -> list[Path]:
    return sorted(p for package in ("oncostream", *STAGES) for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", checked_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_the_import_layers(path):
    assert violations(path) == []


def test_the_check_catches_a_violation(tmp_path, monkeypatch):
    probe = tmp_path / "ingest" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("def f():\n    from postprocess.file_sink import FileSink\n    from oncostream.app import lifecycle\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations(probe) == ["ingest/probe.py:2 imports postprocess.file_sink",
                                 "ingest/probe.py:3 imports oncostream.app"]
