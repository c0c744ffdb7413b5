"""The built-in generator with its real weights (from the gan-face-generate package), end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clusterguide.cli import main
from clusterguide.errors import UserError

pytest.importorskip(
    "gan_face_generate", reason="run `pip install --no-deps gan-face-generate` (make test does)"
)


def test_weights_load_strictly_and_make_faces():
    from clusterguide.generators import load_generator

    G = load_generator("digiface-dcgan")
    assert G.latent_dim == 100 and G.image_size == 64 and len(G.weights_id) == 64
    images = G.synthesize(G.sample_latents(4, 0))
    assert images.shape == (4, 3, 64, 64)
    # trained weights give varied, not constant, images in [-1, 1]
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.2


def test_missing_weights_package_is_one_clear_error(monkeypatch):
    import importlib.util

    from clusterguide.generators import dcgan

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps gan-face-generate"):
        dcgan.find_weights()


def test_wrong_checkpoint_is_one_clear_error(tmp_path):
    from clusterguide.generators.dcgan import DCGANAdapter

    bad = tmp_path / "bad.tar"
    torch.save({"netG_state_dict": {"main.0.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(UserError, match="does not match the architecture"):
        DCGANAdapter.pretrained(str(bad))


@pytest.mark.slow
def test_fit_sample_grid_on_the_real_weights(tmp_path, capsys):
    run_dir = tmp_path / "faces"
    code = main(
        [
            "fit",
            "--generator",
            "digiface-dcgan",
            "--layer",
            "block1",
            "--clusters",
            "3",
            "--samples",
            "1500",
            "--epochs",
            "15",
            "--out",
            str(run_dir),
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = json.loads((run_dir / "config.json").read_text())
    assert len(config["generator"]["info"]["weights_id"]) == 64  # sha256 of weights.tar
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [c["id"] for c in metrics["clusters"]] == ["0", "1", "2"]
    assert sum(c["size"] for c in metrics["clusters"]) == 1500
    for row in metrics["clusters"]:
        assert row["fidelity"] > row["share"] + 0.1  # well above what the prior gives
    assert (
        main(["sample", str(run_dir), "--cluster", "2", "-n", "4", "--out", str(tmp_path / "s"), "-q"]) == 0
    )
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (4, 64, 64, 3) and images.std() > 10
    assert main(["grid", str(run_dir), "--out", str(tmp_path / "o.png"), "--per-cluster", "3", "-q"]) == 0
    assert (tmp_path / "o.png").stat().st_size > 10_000
