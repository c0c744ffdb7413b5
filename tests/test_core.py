"""Library-level behaviour of the core: streams, generators, k-means, run folders, sampling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from clusterguide.clustering import assign, fit_kmeans
from clusterguide.errors import UserError
from clusterguide.generators import load_generator
from clusterguide.run import Run
from clusterguide.sampler import ClusterSampler
from clusterguide.seeding import randn_streams


def test_streams_do_not_depend_on_how_they_are_cut():
    whole = randn_streams(7, 0, 700, 5)
    pieces = torch.cat([randn_streams(7, s, 100, 5) for s in range(0, 700, 100)])
    assert torch.equal(whole, pieces)
    assert torch.equal(randn_streams(7, 333, 1, 5)[0], whole[333])
    assert not torch.equal(randn_streams(8, 0, 10, 5), whole[:10])


def test_head_then_tail_is_the_whole_generator(tiny_generator):
    G = tiny_generator
    z = G.sample_latents(4, seed=1)
    full = G.synthesize(z)
    assert full.shape == (4, 3, 64, 64)
    for info in G.layers():
        h = G.head(z, info.name)
        assert tuple(h.shape[1:]) == info.shape
        assert torch.allclose(G.tail(h, info.name, z=z), full, atol=1e-5)


def test_unknown_layer_and_generator_are_user_errors(tiny_generator):
    with pytest.raises(UserError, match="unknown layer"):
        tiny_generator.head(torch.zeros(1, 16), "block9")
    with pytest.raises(UserError, match="unknown generator"):
        load_generator("no-such-gan")


def test_custom_generator_by_import_path():
    G = load_generator("tiny_factory:make")
    assert G.latent_dim == 8
    assert "0" in G.layer_names()
    z = G.sample_latents(3, 0)
    h = G.head(z, "1")
    assert h.shape == (3, 32)
    assert torch.allclose(G.tail(h, "1"), G.synthesize(z))


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 10)) * 20
    x = np.concatenate([c + rng.normal(size=(200, 10)) for c in centers]).astype(np.float32)
    truth = np.repeat(np.arange(4), 200)
    km = fit_kmeans(x, 4, seed=0)
    # each true blob maps to exactly one cluster
    pairs = {(int(t), int(c)) for t, c in zip(truth, km.labels)}
    assert len(pairs) == 4
    assert (assign(x, km.centroids) == km.labels).all()
    assert km.sizes.tolist() == [200] * 4


def test_kmeans_rejects_bad_k():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(UserError):
        fit_kmeans(x, 1)
    with pytest.raises(UserError):
        fit_kmeans(x, 6)


def test_run_round_trip_gives_identical_images(tiny_run):
    run_dir, run = tiny_run
    a = ClusterSampler.load(run_dir)
    b = ClusterSampler.load(run_dir)
    for method in ("imle", "exact"):
        x, y = a("0", 6, seed=3, method=method), b("0", 6, seed=3, method=method)
        assert np.array_equal(x.latents, y.latents)
        assert np.array_equal(x.images, y.images)
    loaded = Run.load(run_dir)
    assert loaded.clusters() == run.clusters()
    for path, net in run.mappings.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, loaded.mappings[path].state_dict()[key])


def test_same_seed_same_images_whatever_the_batch_size(tiny_run):
    run_dir, _ = tiny_run
    sampler = ClusterSampler.load(run_dir)
    for method in ("imle", "exact"):
        small = sampler("1", 7, seed=5, method=method, batch_size=2)
        large = sampler("1", 7, seed=5, method=method, batch_size=64)
        assert np.array_equal(small.latents, large.latents)
        assert np.array_equal(small.images, large.images)
        # and a prefix of a longer draw is the shorter draw
        assert np.array_equal(sampler("1", 3, seed=5, method=method).latents, small.latents[:3])
    other = sampler("1", 7, seed=6)
    assert not np.array_equal(other.latents, small.latents)


def test_exact_samples_are_in_their_cluster_and_report_acceptance(tiny_run):
    run_dir, run = tiny_run
    sampler = ClusterSampler.load(run_dir)
    out = sampler("2", 10, seed=0, method="exact")
    z = torch.from_numpy(out.latents)
    assert run.tree.membership(sampler.generator, z, "2").all()
    assert 0 < out.acceptance_rate <= 1
    assert out.tried >= 10


def test_damaged_run_folder_is_a_user_error(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    data = bytearray((copy / "mappings.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (copy / "mappings.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        Run.load(copy)
    (copy / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        Run.load(copy)
    (copy / "config.json").unlink()
    with pytest.raises(UserError, match="missing"):
        Run.load(copy)
    with pytest.raises(UserError, match="does not exist"):
        Run.load(tmp_path / "nowhere")


def test_config_records_generator_and_settings(tiny_run):
    run_dir, _ = tiny_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["generator"]["name"] == "tiny-dcgan"
    assert config["generator"]["info"]["weights_id"].startswith("tiny-random")
    assert config["fit"]["layer"] == "block1" and config["fit"]["clusters"] == 3
    assert config["mapping"]["recipe"] == "fast"
    assert config["version"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ids = [c["id"] for c in metrics["clusters"]]
    assert ids == ["0", "1", "2"]
    for row in metrics["clusters"]:
        assert 0 <= row["fidelity"] <= 1 and row["norm_ratio"] > 0 and row["size"] > 0


def test_failed_fit_leaves_nothing_behind(tmp_path, monkeypatch):
    from conftest import fit_tiny

    import clusterguide.fitting as fit_module

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during mapping training")

    monkeypatch.setattr(fit_module, "fit_mappings", boom)
    with pytest.raises(RuntimeError):
        fit_tiny(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_small_cluster_is_reported_not_trained(tmp_path):
    from conftest import fit_tiny

    # many clusters over few samples: some fall under min_cluster_size=8
    run, _ = fit_tiny(tmp_path / "run", k=40, samples=200, epochs=1)
    assert run.skipped, "expected at least one cluster too small to train"
    path = next(iter(run.skipped))
    assert path not in run.mappings
    assert "fewer than min_cluster_size" in run.skipped[path]
    with pytest.raises(UserError, match="no mapping"):
        ClusterSampler.load(tmp_path / "run")(path, 2, method="imle")
