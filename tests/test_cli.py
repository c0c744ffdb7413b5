"""The core commands end to end on the tiny generator, and every error a user can cause:
one line on stderr, exit code 2, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clusterguide.cli import main

FIT = ["fit", "--generator", "tiny-dcgan", "--layer", "block1", "--samples", "400", "--epochs", "2", "-q"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, *args, match: str):
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert "Traceback" not in err


def test_layers_lists_shapes(capsys):
    code, out, _ = run_cli(capsys, "layers", "--generator", "tiny-dcgan")
    assert code == 0
    assert "block1" in out and "64x4x4" in out and "block4" in out


def test_fit_sample_grid_info(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, *FIT, "--clusters", "3", "--out", run_dir)
    assert code == 0, err
    assert "fidelity" in out and (run_dir / "metrics.json").exists()
    assert "recall >= 0.9 x ceiling: the mapping " in out  # the verdict on issue 12's bars
    code, out, err = run_cli(
        capsys, "sample", run_dir, "--cluster", "1", "-n", "5", "--seed", "2", "--out", tmp_path / "s"
    )
    assert code == 0, err
    data = np.load(tmp_path / "s.npz")
    assert data["images"].shape == (5, 64, 64, 3) and data["images"].dtype == np.uint8
    assert data["latents"].shape == (5, 16) and data["latents"].dtype == np.float32
    assert Image.open(tmp_path / "s.png").size[0] > 64
    code, out, err = run_cli(
        capsys,
        "sample",
        run_dir,
        "--cluster",
        "1",
        "-n",
        "3",
        "--method",
        "exact",
        "--out",
        tmp_path / "e.png",
    )
    assert code == 0 and "acceptance" in out
    code, out, err = run_cli(
        capsys, "grid", run_dir, "--out", tmp_path / "overview.png", "--per-cluster", "4"
    )
    assert code == 0, err
    overview = Image.open(tmp_path / "overview.png")
    assert overview.height >= 3 * 64  # one row per cluster
    code, out, err = run_cli(capsys, "info", run_dir)
    assert code == 0 and "tiny-dcgan" in out and "block1" in out
    assert "x ceiling: the mapping " in out


def test_fit_refuses_to_overwrite_without_force(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert_user_error(capsys, *FIT, "--clusters", "2", "--out", run_dir, match="already exists")


@pytest.mark.parametrize(
    "args, match",
    [
        (["--generator", "nope", "--layer", "block1", "--clusters", "2"], "unknown generator"),
        (["--generator", "tiny-dcgan", "--layer", "block9", "--clusters", "2"], "unknown layer"),
        (["--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "1"], "at least 2"),
        (
            ["--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "50", "--samples", "10"],
            "larger than",
        ),
        (["--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "x"], "not a valid integer"),
        (["--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "2", "--device", "cuda"], "cuda"),
        (
            ["--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "2", "--set", "spread=lots"],
            "mapping setting spread takes a number, not 'lots'",
        ),
        (
            ["--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "2", "--set", "seed=3"],
            "unknown mapping setting 'seed'",
        ),
    ],
)
def test_fit_bad_input(tmp_path, capsys, args, match):
    assert_user_error(capsys, "fit", *args, "--epochs", "1", "--out", tmp_path / "run", match=match)
    assert not (tmp_path / "run").exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left either


def test_fit_takes_mapping_settings_by_name(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        capsys, *FIT, "--clusters", "2", "--set", "hinge_dims=0", "--set", "spread=0.5", "--out", run_dir
    )
    assert code == 0, err
    mapping = json.loads((run_dir / "config.json").read_text())["mapping"]
    assert (mapping["hinge_dims"], mapping["spread"], mapping["epochs"]) == (0, 0.5, 2)


def test_sample_bad_input(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    assert_user_error(
        capsys, "sample", run_dir, "--cluster", "7", "-n", "2", "--out", tmp_path / "x", match="no cluster"
    )
    assert_user_error(
        capsys,
        "sample",
        tmp_path / "missing",
        "--cluster",
        "0",
        "--out",
        tmp_path / "x",
        match="does not exist",
    )
    assert_user_error(
        capsys, "sample", run_dir, "--cluster", "0", "--out", tmp_path / "x.jpg", match="must end in"
    )
    assert_user_error(
        capsys, "sample", run_dir, "--cluster", "0", "--out", tmp_path / "no" / "x", match="does not exist"
    )
    assert_user_error(
        capsys, "sample", run_dir, "--cluster", "0", "-n", "0", "--out", tmp_path / "x", match="at least 1"
    )
    assert_user_error(capsys, "grid", run_dir, "--out", tmp_path / "g.gif", match="must end in")
    assert list(tmp_path.iterdir()) == []


def test_damaged_run_is_one_line(tiny_run, tmp_path, capsys):
    import shutil

    run_dir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "clusters.safetensors").write_bytes(b"garbage")
    assert_user_error(capsys, "info", copy, match="damaged")
    assert_user_error(capsys, "sample", copy, "--cluster", "0", "--out", tmp_path / "x", match="damaged")
    (copy / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert_user_error(capsys, "info", copy, match="not a clusterguide run")


def test_output_that_cannot_be_written(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    (tmp_path / "taken.png").mkdir()
    assert_user_error(capsys, "grid", run_dir, "--out", tmp_path / "taken.png", match="is a folder")
    (tmp_path / "file").write_text("x")
    assert_user_error(capsys, "grid", run_dir, "--out", tmp_path / "file" / "g.png", match="does not exist")
