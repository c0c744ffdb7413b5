"""Naming clusters: `clusterguide name`, names wherever a cluster is accepted, and the errors."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from clusterguide.cli import main
from clusterguide.errors import UserError
from clusterguide.run import Run, set_name
from clusterguide.sampler import ClusterSampler


@pytest.fixture()
def run_dir(tiny_run, tmp_path):
    """A private copy of the shared 3-cluster tiny run (conftest.py)."""
    return shutil.copytree(tiny_run[0], tmp_path / "run")


def one_line_error(capsys, code: int, match: str) -> str:
    out = capsys.readouterr()
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert match in lines[0], lines[0]
    return lines[0]


def test_name_show_rename_and_clear(run_dir, capsys):
    assert main(["name", str(run_dir), "0", "  turned   left "]) == 0
    assert "cluster 0 is now named 'turned left'" in capsys.readouterr().out
    assert json.loads((run_dir / "names.json").read_text()) == {"0": "turned left"}
    assert main(["name", str(run_dir), "TURNED LEFT"]) == 0  # show; case-insensitive lookup
    assert capsys.readouterr().out.strip() == "cluster 0: turned left"
    assert main(["name", str(run_dir), "turned left", "facing left"]) == 0  # rename by name
    assert Run.load(run_dir).names == {"0": "facing left"}
    assert main(["name", str(run_dir), "facing left", "--clear"]) == 0
    assert Run.load(run_dir).names == {}
    assert main(["name", str(run_dir), "0"]) == 0
    assert "has no name" in capsys.readouterr().out


def test_a_name_is_accepted_wherever_a_path_is(run_dir, capsys, tmp_path):
    set_name(run_dir, "2", "smiling")
    run = Run.load(run_dir)
    assert run.resolve("smiling") == run.resolve("Smiling") == run.resolve("2") == run.resolve(2) == "2"
    out = ClusterSampler.load(run_dir)("smiling", 3, seed=1)
    assert out.cluster == "2" and out.images.shape[0] == 3
    args = ["sample", str(run_dir), "--cluster", "smiling", "-n", "2", "--out", str(tmp_path / "s"), "-q"]
    assert main(args) == 0
    assert "cluster 2 smiling" in capsys.readouterr().out
    assert main(["info", str(run_dir)]) == 0
    assert any(line.split()[:2] == ["2", "smiling"] for line in capsys.readouterr().out.splitlines())


def test_unknown_cluster_or_name_is_one_line(run_dir, capsys, tmp_path):
    code = main(["sample", str(run_dir), "--cluster", "bald", "-n", "2", "--out", str(tmp_path / "s")])
    one_line_error(capsys, code, "no cluster 'bald'")
    one_line_error(capsys, main(["name", str(run_dir), "5", "x"]), "no cluster '5'")
    one_line_error(capsys, main(["name", str(tmp_path / "missing"), "0", "x"]), "does not exist")


def test_ambiguous_name_is_one_line(run_dir, capsys, tmp_path):
    # set_name refuses duplicates, so an ambiguous names.json can only come from a hand edit
    (run_dir / "names.json").write_text(json.dumps({"0": "dark", "1": "dark"}))
    code = main(["sample", str(run_dir), "--cluster", "dark", "-n", "2", "--out", str(tmp_path / "s")])
    one_line_error(capsys, code, "ambiguous: it names 0, 1")
    with pytest.raises(UserError, match="ambiguous"):
        ClusterSampler.load(run_dir)("dark", 1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["1", "smiling"], "already used by cluster 0"),
        (["1", "SMILING"], "already used by cluster 0"),
        (["1", "2"], "looks like a cluster path"),
        (["1", "0/1"], "looks like a cluster path"),  # not a cluster yet, but refine could make it one
        (["1", "   "], "empty"),
        (["1", "x" * 101], "at most 100"),
        (["1", "y", "--clear"], "not both"),
    ],
)
def test_bad_names_are_refused(run_dir, capsys, args, match):
    set_name(run_dir, "0", "smiling")
    one_line_error(capsys, main(["name", str(run_dir), *args]), match)
    assert Run.load(run_dir).names == {"0": "smiling"}


def test_concurrent_names_are_all_kept(run_dir):
    errors = []

    def name(i):
        try:
            set_name(run_dir, str(i), f"name {i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=name, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Run.load(run_dir).names == {"0": "name 0", "1": "name 1", "2": "name 2"}
