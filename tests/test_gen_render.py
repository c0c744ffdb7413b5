"""``clusterguide render``: latents from a file through any generator, checked against the publishers'
reference outputs (tests/fixtures/reference), and its one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clusterguide.cli import main
from clusterguide.imaging import to_uint8

REF = Path(__file__).parent / "fixtures" / "reference"


def reference(family: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((REF / family / "reference.json").read_text())
    with np.load(REF / family / "reference.npz") as data:
        return meta, {k: data[k] for k in data.files}


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def expected_uint8(images: np.ndarray) -> np.ndarray:
    return to_uint8(torch.from_numpy(images))


@pytest.mark.parametrize(
    ("family", "latents_key", "images_key", "options"),
    [
        ("rosinality", "z", "images", []),
        ("rosinality", "z", "images_trunc", ["--truncation", "0.5"]),
        ("rosinality", "w_trunc", "images_trunc", ["--latent-space", "w"]),
        ("pgan", "z", "images", []),
        ("biggan-deep", "z_trunc", "images_trunc", ["--truncation", "0.4", "--class", "3"]),
    ],
)
def test_render_gives_the_publishers_images(tmp_path, capsys, family, latents_key, images_key, options):
    meta, ref = reference(family)
    np.save(tmp_path / "latents.npy", ref[latents_key])
    checkpoint = REF / family / meta["checkpoint"]
    code, out, err = run(
        capsys, "render", "--generator", meta["generator"], "--checkpoint", checkpoint,
        "--latents", tmp_path / "latents.npy", "--out", tmp_path / "out.png", "-q", *options,
    )  # fmt: skip
    assert code == 0, err
    assert f"{len(ref[latents_key])} images" in out
    with np.load(tmp_path / "out.npz") as data:
        images, latents = data["images"], data["latents"]
    assert np.array_equal(latents, ref[latents_key])
    # <= 1e-5 apart before rounding, so at most one step apart after it
    diff = np.abs(images.astype(int) - expected_uint8(ref[images_key]).astype(int))
    assert images.dtype == np.uint8 and diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert Image.open(tmp_path / "out.png").size[0] > 32


def test_render_reads_its_own_and_samples_npz_and_batch_size_does_not_matter(tmp_path, capsys):
    _, ref = reference("rosinality")
    np.save(tmp_path / "z.npy", ref["z"])
    base = ["render", "--generator", "stylegan2", "--checkpoint", REF / "rosinality" / "rosinality.pt", "-q"]
    assert (
        run(capsys, *base, "--latents", tmp_path / "z.npy", "--out", tmp_path / "a", "--batch-size", "1")[0]
        == 0
    )
    # the .npz written (images + latents, as `sample` writes) is itself a latents file
    assert run(capsys, *base, "--latents", tmp_path / "a.npz", "--out", tmp_path / "b.npz")[0] == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["latents"], b["latents"])
        assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1
    # one latent as a 1-D array
    np.save(tmp_path / "one.npy", ref["z"][0])
    assert run(capsys, *base, "--latents", tmp_path / "one.npy", "--out", tmp_path / "c")[0] == 0
    with np.load(tmp_path / "c.npz") as c:
        assert c["images"].shape == (1, 32, 32, 3)


def _bad_inputs(tmp_path: Path) -> list[tuple[str, str]]:
    np.save(tmp_path / "wide.npy", np.zeros((2, 33), np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 32), np.float32))
    np.save(tmp_path / "nan.npy", np.full((2, 32), np.nan, np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 32)), b=np.zeros((1, 32)))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    (tmp_path / "z.txt").write_text("0 0")
    return [
        ("wide.npy", "33 values per latent, but this generator's latent has 32"),
        ("cube.npy", "expected an N x D array, got shape (2, 3, 32)"),
        ("nan.npy", "NaN"),
        ("objects.npy", "cannot be read"),
        ("two.npz", "holds a, b; name the array 'latents'"),
        ("junk.npy", "cannot be read"),
        ("z.txt", "must be a .npy or .npz file"),
        ("missing.npy", "not found"),
    ]


def test_bad_latents_are_one_line_and_write_nothing(tmp_path, capsys):
    base = ["render", "--generator", "stylegan2", "--checkpoint", REF / "rosinality" / "rosinality.pt", "-q"]
    for name, match in _bad_inputs(tmp_path):
        code, _, err = run(capsys, *base, "--latents", tmp_path / name, "--out", tmp_path / "out")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and match in lines[0], (name, err)
    assert not list(tmp_path.glob("out*"))
    np.save(tmp_path / "z.npy", np.zeros((1, 32), np.float32))
    code, _, err = run(capsys, *base, "--latents", tmp_path / "z.npy", "--out", tmp_path / "no" / "out")
    assert code == 2 and "does not exist" in err
    # a class-conditional generator needs its class
    np.save(tmp_path / "z.npy", np.zeros((1, 16), np.float32))
    code, _, err = run(
        capsys, "render", "--generator", "biggan", "--checkpoint", REF / "biggan-deep" / "biggan",
        "--latents", tmp_path / "z.npy", "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 2 and "--class" in err
