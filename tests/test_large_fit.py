"""Fits whose k-means runs on PCA-reduced features: saved, loaded and sampled like any run, and
clustering like the full features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clusterguide import large_fit
from clusterguide.cli import main
from clusterguide.fitting import fit_run
from clusterguide.generators import GeneratorSpec
from clusterguide.large_fit import ScaleOptions, adjusted_rand_index, cluster_latents, mapping_latents
from clusterguide.mapping import MappingConfig
from clusterguide.run import FitConfig, Run
from clusterguide.sampler import ClusterSampler


def fit_reduced(out_dir, reduce: int, **scale):
    run, G = fit_run(
        GeneratorSpec("tiny-dcgan"),
        FitConfig(layer="block1", clusters=3, samples=600, seed=0, eval_samples=200, min_cluster_size=8),
        MappingConfig.preset("fast", epochs=3, width=64, batch_size=64),
        log=lambda m: None,
        scale=ScaleOptions(reduce=reduce, **scale),
    )
    run.save(out_dir)
    return run, G


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "reduced"
    run, _ = fit_reduced(out, 16)
    return out, run


def test_adjusted_rand_index():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, (a + 1) % 3) == pytest.approx(1.0)  # names do not matter
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(0, 4, 5000), rng.integers(0, 4, 5000))) < 0.01


def test_reduced_run_saves_loads_and_samples(reduced_run):
    out, run = reduced_run
    split = run.tree.splits[""]
    assert split.reduction is not None and split.reduction.dim == 16
    assert split.centroids.shape == (3, 16)
    meta = json.loads((out / "config.json").read_text())["tree"]["splits"][""]
    assert meta["reduction"]["dim"] == 16
    loaded = Run.load(out)
    np.testing.assert_array_equal(loaded.tree.splits[""].reduction.components, split.reduction.components)
    sampler = ClusterSampler.load(out)
    exact = sampler.sample("1", 12, seed=2, method="exact")
    assert run.tree.membership(sampler.generator, torch.from_numpy(exact.latents), "1").all()
    imle = sampler.sample("1", 8, seed=2)
    assert imle.images.shape == (8, 64, 64, 3)
    fidelity = [r["fidelity"] for r in loaded.metrics["clusters"] if r.get("fidelity") is not None]
    assert fidelity and min(fidelity) > 0.5


def test_runs_without_a_reduction_keep_their_config(tiny_run):
    out, run = tiny_run
    meta = json.loads((out / "config.json").read_text())["tree"]["splits"][""]
    assert "reduction" not in meta and run.tree.splits[""].reduction is None


def test_reduced_clustering_agrees_with_full(tiny_generator):
    G = tiny_generator
    z = G.sample_latents(3000, 1)
    full = cluster_latents(G, z, "block1", 4, seed=0, options=ScaleOptions(reduce=0))
    reduced = cluster_latents(G, z, "block1", 4, seed=0, options=ScaleOptions(reduce=64))
    assert full.reduction is None and full.features.shape[1] == 1024
    assert reduced.features.shape == (3000, 64)
    other_seed = cluster_latents(G, z, "block1", 4, seed=1, options=ScaleOptions(reduce=0))
    # reduced vs full is within what another k-means seed on the full features changes
    floor = adjusted_rand_index(full.kmeans.labels, other_seed.kmeans.labels)
    assert adjusted_rand_index(full.kmeans.labels, reduced.kmeans.labels) > min(0.9, floor - 0.05)


def test_reduction_is_automatic_only_past_the_memory_budget():
    assert large_fit.reduction_dims(20_000, 8192, None) is None  # the demo job: full features
    assert large_fit.reduction_dims(1_000_000, 8192, None) == large_fit.REDUCED_DIMS
    assert large_fit.reduction_dims(1_000_000, 8192, 0) is None
    assert large_fit.reduction_dims(10, 100, 300) == 100


def test_large_clusters_train_on_a_seeded_subsample(monkeypatch):
    monkeypatch.setattr(large_fit, "MAPPING_SAMPLES", 50)
    latents = torch.arange(1000, dtype=torch.float32)[:, None]
    labels = np.arange(1000) % 3
    small = mapping_latents(latents, labels, 0, seed=0)
    assert small.shape[0] == 50 and set(small[:, 0].long().tolist()) <= set(range(0, 1000, 3))
    assert torch.equal(small, mapping_latents(latents, labels, 0, seed=0))
    monkeypatch.setattr(large_fit, "MAPPING_SAMPLES", 10_000)
    assert torch.equal(mapping_latents(latents, labels, 1, seed=0), latents[torch.from_numpy(labels == 1)])


@pytest.mark.parametrize(
    "args, match",
    [
        (["--reduce", "-1"], "--reduce"),
        (["--ray", "127.0.0.1:1"], "cannot reach"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_fit_scale_options_are_checked(tmp_path, capsys, args, match):
    code = main(
        [
            "fit",
            "--generator",
            "tiny-dcgan",
            "--layer",
            "block1",
            "--clusters",
            "3",
            "--out",
            str(tmp_path / "r"),
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_features_on_two_processes_give_the_same_run(reduced_run, tmp_path):
    _, run = reduced_run
    other, _ = fit_reduced(
        tmp_path / "w2", 16, backend=large_fit.Backend(workers=2), spec=GeneratorSpec("tiny-dcgan")
    )
    np.testing.assert_array_equal(other.tree.splits[""].centroids, run.tree.splits[""].centroids)
    assert other.tree.stats == run.tree.stats


def test_a_reduced_run_can_be_refined(reduced_run, tmp_path):
    import shutil

    from clusterguide.refine import refine_run

    path = shutil.copytree(reduced_run[0], tmp_path / "run")
    refine_run(path, "1", "block2", 2, samples=120, log=lambda m: None)
    run = Run.load(path)
    assert run.tree.splits[""].reduction is not None and run.tree.splits["1"].reduction is None
    sampler = ClusterSampler.load(path)
    out = sampler.sample("1/0", 6, seed=1, method="exact")
    assert run.tree.membership(sampler.generator, torch.from_numpy(out.latents), "1/0").all()


def test_small_fits_keep_the_full_feature_path(tiny_run, tiny_generator):
    """Below the memory budget a fit is what it always was: k-means on the full features."""
    from clusterguide.clustering import fit_kmeans
    from clusterguide.features import extract_features
    from clusterguide.fitting import sample_prior

    _, run = tiny_run
    cfg = run.fit
    feats = extract_features(tiny_generator, cfg.layer, sample_prior(tiny_generator, cfg.samples, cfg.seed))
    km = fit_kmeans(
        feats,
        cfg.clusters,
        seed=cfg.seed,
        niter=cfg.kmeans_iters,
        nredo=cfg.kmeans_restarts,
        init=cfg.kmeans_init,
    )
    split = run.tree.splits[""]
    assert split.reduction is None
    np.testing.assert_array_equal(split.centroids, km.centroids)
    assert [run.tree.stats[str(i)]["size"] for i in range(cfg.clusters)] == km.sizes.tolist()


def test_a_damaged_reduction_is_one_line(reduced_run, tmp_path):
    import shutil

    from clusterguide.errors import UserError

    path = shutil.copytree(reduced_run[0], tmp_path / "run")
    config = json.loads((path / "config.json").read_text())
    config["tree"]["splits"][""]["reduction"]["dim"] = 0
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="reduction.dim"):
        Run.load(path)


@pytest.mark.slow
def test_fit_on_ray_gives_the_labels_of_one_process(reduced_run, tmp_path, capsys):
    """The whole ``fit`` command with its features on a local Ray instance (127.0.0.1, shut down)."""
    ray = pytest.importorskip("ray")
    _, run = reduced_run
    out = tmp_path / "ray"
    args = ["fit", "--generator", "tiny-dcgan", "--layer", "block1", "--clusters", "3", "--samples", "600"]
    args += ["--epochs", "1", "--reduce", "16", "--ray", "auto", "--workers", "2", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert not ray.is_initialized()
    other = Run.load(out)
    np.testing.assert_array_equal(other.tree.splits[""].centroids, run.tree.splits[""].centroids)
    np.testing.assert_array_equal(
        other.tree.splits[""].reduction.components, run.tree.splits[""].reduction.components
    )
    assert other.tree.stats == run.tree.stats
    G = ClusterSampler.load(out).generator
    z = G.sample_latents(200, 3)
    assert other.tree.leaf_of(G, z) == run.tree.leaf_of(G, z)


def test_api_fit_takes_the_scale_options():
    import clusterguide as cg
    from clusterguide.errors import UserError

    sampler = cg.fit("tiny-dcgan", "block1", 3, samples=400, epochs=2, reduce=8, workers=1, verbose=False)
    reduction = sampler.run.tree.splits[""].reduction
    assert reduction is not None and reduction.components.shape[1] == 8
    with pytest.raises(UserError, match="--workers"):
        cg.fit("tiny-dcgan", "block1", 3, samples=400, workers=0, verbose=False)
