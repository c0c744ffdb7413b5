"""ClusterGAN and SCGAN: training moves the losses, checkpoints resume bit-exactly, ClusterGAN's
encoder recovers its own cluster codes, trained generators load and draw their clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from clusterguide.artifacts import read_json
from clusterguide.baselines import make_method
from clusterguide.baselines.clustergan import latent
from clusterguide.baselines.model import TrainedBaseline
from clusterguide.baselines.selfcond import kmeans, match_clusters
from clusterguide.baselines.training import Budget, train
from clusterguide.errors import UserError

TINY = {"size": 8, "width": 8, "noise_dim": 8, "batch_size": 16, "lr": 1e-3}  # tiny nets, fast lr


def toy_mixture(n: int = 256, seed: int = 0) -> np.ndarray:
    """8x8 images from four modes: a red, green, blue or white square on black, with noise."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 220]], dtype=np.float64)
    mode = rng.integers(0, 4, n)
    x = np.zeros((n, 8, 8, 3))
    x[:, 2:6, 2:6] = colours[mode][:, None, None, :]
    x += rng.normal(0, 12, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def run(method, out, steps, resume=False, **settings):
    m = make_method(method, **{**TINY, **settings})
    state = train(m, toy_mixture(), out, Budget(steps, log_every=5), resume=resume, log=lambda s: None)
    return m, state


def _mean(history, key, sl):
    return float(np.mean([h[key] for h in history[sl]]))


def test_clustergan_losses_fall(tmp_path):
    _, state = run("clustergan", tmp_path / "cg", 60, n_critic=2)
    h = state.history
    assert len(h) == 12
    # the critic learns to separate real from generated, the encoder learns to read the cluster code
    # (z_n, with sigma 0.1, is too small a signal for 60 steps to show)
    assert _mean(h, "d", slice(-3, None)) < _mean(h, "d", slice(0, 2))
    assert _mean(h, "zc", slice(-3, None)) < 0.5 * _mean(h, "zc", slice(0, 2))


def test_selfcond_discriminator_loss_falls(tmp_path):
    _, state = run("selfcond", tmp_path / "sc", 60, recluster_every=20, cluster_images=128)
    h = state.history
    assert _mean(h, "d", slice(-3, None)) < _mean(h, "d", slice(0, 2))


@pytest.mark.parametrize(
    "method,settings",
    [("clustergan", {"n_critic": 2}), ("selfcond", {"recluster_every": 3, "cluster_images": 64})],
)
def test_resume_is_bit_exact(tmp_path, method, settings):
    run(method, tmp_path / "straight", 8, **settings)
    run(method, tmp_path / "split", 4, **settings)
    with pytest.raises(UserError, match="--resume"):
        run(method, tmp_path / "split", 8, **settings)
    _, state = run(method, tmp_path / "split", 8, resume=True, **settings)
    assert state.step == 8
    files = {}
    for name in ("straight", "split"):
        info = read_json(tmp_path / name / "checkpoint.json")
        files[name] = load_file(str(tmp_path / name / info["tensors"]))
        assert len(list((tmp_path / name).glob("checkpoint-*.safetensors"))) == 1  # old ones removed
    a, b = files["straight"], files["split"]
    assert a.keys() == b.keys()
    assert any(k.startswith("opt.") for k in a)  # optimiser moments are part of it
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and different from an untrained start, so the comparison means something
    fresh = make_method(method, **{**TINY, **settings}).modules()["G"].state_dict()
    assert any(not torch.equal(v, a[f"model.G.{k}"]) for k, v in fresh.items())


def test_resume_refuses_other_settings(tmp_path):
    run("selfcond", tmp_path / "sc", 2, recluster_every=5, cluster_images=64)
    with pytest.raises(UserError, match="other settings"):
        run("selfcond", tmp_path / "sc", 4, resume=True, recluster_every=7, cluster_images=64)


def test_clustergan_encoder_recovers_its_codes(tmp_path):
    m, _ = run("clustergan", tmp_path / "cg", 80, n_critic=1, k=4)
    g = torch.Generator().manual_seed(123)
    noise = torch.randn(400, m.config.noise_dim, generator=g) * m.config.sigma
    codes = torch.arange(4).repeat(100)
    m.G.eval()
    with torch.no_grad():
        x = m.G(latent(noise, codes, 4))
    accuracy = float((m.encode_clusters(x) == codes).float().mean())
    assert accuracy > 0.25 + 0.35  # chance is 1/4


def test_kmeans_and_matching():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres.repeat_interleave(50, 0) + torch.randn(150, 2, generator=g)
    _, labels, _ = kmeans(x, 3, g)
    truth = torch.arange(3).repeat_interleave(50)
    perm = match_clusters(labels, truth, 3)
    assert sorted(perm) == [0, 1, 2]
    assert bool((torch.tensor(perm)[labels] == truth).all())


def test_trained_generator_loads_and_draws(tmp_path):
    run("selfcond", tmp_path / "sc", 4, recluster_every=50, cluster_images=64)
    tb = TrainedBaseline.load(tmp_path / "sc")
    assert tb.k == 4 and abs(sum(tb.prior) - 1) < 1e-9
    a = tb.images(2, 5, seed=3)
    assert a.shape == (5, 8, 8, 3) and a.dtype == np.uint8
    assert np.array_equal(tb.images(2, 3, seed=3), a[:3])  # the same noise whatever n is
    assert not np.array_equal(tb.images(1, 3, seed=3), a[:3])  # the label changes the images
    with pytest.raises(UserError, match="clusters 0..3"):
        tb.images(4, 1, seed=0)


def test_cli_trains_and_resumes(tmp_path):
    from clusterguide.cli import cli

    out = tmp_path / "runs" / "cg"
    args = ["train-baseline", "clustergan", "--out", str(out), "--steps", "2", "--images", "32",
            "--size", "16", "--width", "4", "--generator", "tiny-dcgan", "-q"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert (out / "generator.safetensors").is_file()
    assert len(list((tmp_path / "runs").glob("tiny-dcgan-*-16px-n32-seed0.npy"))) == 1
    r = CliRunner().invoke(cli, [*args[:5], "3", *args[6:], "--resume"])
    assert r.exit_code == 0, r.output
    assert read_json(out / "checkpoint.json")["step"] == 3


@pytest.mark.parametrize("method", ["clustergan", "selfcond"])
def test_shipped_weights_load_and_draw_32px_faces_domain(method):
    from clusterguide.baselines.model import shipped

    tb = shipped(method)  # checksum-checked against generator.json
    assert tb.k == 4 and tb.config.size == 32 and tb.config.generator == "digiface-dcgan"
    assert tb.info["step"] > 0 and abs(sum(tb.prior) - 1) < 1e-3
    images = tb.images(1, 2, seed=0)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
