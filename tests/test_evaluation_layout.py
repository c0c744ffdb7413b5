"""The evaluation modules import one way, and the face probe's missing dependency is lazy."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from clusterguide.errors import UserError

EVALUATION = Path(__file__).parents[1] / "src" / "clusterguide" / "evaluation"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_face_does_not_import_the_registry():
    assert "clusterguide.evaluation.probes" not in imported_modules(EVALUATION / "face.py")
    assert "clusterguide.evaluation.probes" not in imported_modules(EVALUATION / "probe_base.py")


def test_face_module_imports_without_mediapipe_and_the_probe_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    for name in ("clusterguide.evaluation.face", "clusterguide.evaluation.probes"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    face = importlib.import_module("clusterguide.evaluation.face")  # no error at import
    probes = importlib.import_module("clusterguide.evaluation.probes")
    assert "face" in probes.probe_names()
    with pytest.raises(UserError, match=r"clusterguide\[faces\]"):
        face.FaceProbe()
    with pytest.raises(UserError, match=r"clusterguide\[faces\]"):
        probes.load_probe("face")
