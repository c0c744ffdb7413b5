"""The README's Python block is executed as written, so the documented API cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_the_readme_has_one_api_block_using_the_top_level_names():
    (block,) = python_blocks("The Python API")
    assert "import clusterguide as cg" in block
    assert "cg.fit(" in block and "cg.load(" in block


@pytest.mark.slow
def test_the_readme_api_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("gan_face_generate", reason="the default weights: make test installs them")
    (block,) = python_blocks("The Python API")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs/faces/config.json").is_file()
    assert (tmp_path / "runs/faces/names.json").read_text().count("pose A") == 1
