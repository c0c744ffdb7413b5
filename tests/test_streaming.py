"""Chunked feature extraction on the executor's back ends, and the PCA reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterguide.clustering import assign
from clusterguide.executor import Backend
from clusterguide.features import extract_features
from clusterguide.generators import GeneratorSpec
from clusterguide.reduction import Reduction, fit_pca
from clusterguide.streaming import stream_features, subsample_rows


def low_rank(n: int, f: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(f, rank)))[0]
    scales = np.linspace(5, 1, rank)
    x = (rng.normal(size=(n, rank)) * scales) @ basis.T + 3.0
    return (x + 0.01 * rng.normal(size=(n, f))).astype(np.float32), basis


def test_pca_finds_the_subspace_and_is_seeded():
    x, basis = low_rank(2000, 300, 8)
    red = fit_pca(x, 8, seed=1)
    assert red.components.shape == (300, 8) and red.explained > 0.99
    # the principal axes span the true subspace: projecting the basis on them loses nothing
    overlap = np.linalg.norm(red.components.T @ basis, axis=0)
    assert overlap.min() > 0.99
    np.testing.assert_array_equal(fit_pca(x, 8, seed=1).components, red.components)
    # reduced distances keep the full distances (the rest is noise)
    full = np.linalg.norm(x[:50, None] - x[None, :50], axis=2)
    y = red.apply_numpy(x[:50])
    reduced = np.linalg.norm(y[:, None] - y[None, :], axis=2)
    assert np.abs(full - reduced).max() < 0.05 * full.max()
    np.testing.assert_allclose(red.apply(torch.from_numpy(x[:50])).numpy(), y, rtol=1e-4, atol=1e-4)


def test_reduction_round_trips_through_tensors():
    x, _ = low_rank(500, 40, 4)
    red = fit_pca(x, 4)
    back = Reduction.from_tensors(red.tensors("reduce:"), "reduce:", red.meta())
    np.testing.assert_array_equal(back.components, red.components)
    assert back.explained == red.explained


def test_stream_features_match_the_full_extraction(tiny_generator):
    G = tiny_generator
    z = G.sample_latents(700, 3)
    full = extract_features(G, "block1", z, batch_size=64)
    feats, labels = stream_features(G, "block1", z, batch_size=64, chunk=200)
    assert labels is None
    np.testing.assert_array_equal(feats, full)
    red = fit_pca(full[subsample_rows(700, 300, 0)], 12)
    centroids = red.apply_numpy(full[:5])
    feats, labels = stream_features(
        G, "block1", z, batch_size=64, chunk=128, reduction=red, centroids=centroids
    )
    np.testing.assert_allclose(feats, red.apply_numpy(full), rtol=1e-4, atol=1e-4)
    assert np.mean(labels == assign(red.apply_numpy(full), centroids)) > 0.99
    none, only = stream_features(
        G, "block1", z, batch_size=64, reduction=red, centroids=centroids, features=False
    )
    assert none is None and np.array_equal(only, labels)


@pytest.mark.slow
def test_stream_features_on_two_processes_are_the_same(tiny_generator):
    G = tiny_generator
    z = G.sample_latents(600, 4)
    here, _ = stream_features(G, "block2", z, batch_size=50, chunk=100)
    there, _ = stream_features(
        G, "block2", z, batch_size=50, chunk=100, spec=GeneratorSpec("tiny-dcgan"), backend=Backend(workers=2)
    )
    np.testing.assert_array_equal(here, there)


def test_subsample_rows_are_distinct_sorted_and_seeded():
    rows = subsample_rows(1000, 100, 5)
    assert len(set(rows.tolist())) == 100 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, subsample_rows(1000, 100, 5))
    assert np.array_equal(subsample_rows(10, 100, 5), np.arange(10))


@pytest.mark.slow
def test_stream_features_on_ray_are_the_same(tiny_generator):
    import ray

    G = tiny_generator
    z = G.sample_latents(300, 6)
    centroids = extract_features(G, "block1", z[:3])
    here, labels = stream_features(G, "block1", z, batch_size=50, chunk=100, centroids=centroids)
    there, ray_labels = stream_features(
        G,
        "block1",
        z,
        batch_size=50,
        chunk=100,
        centroids=centroids,
        spec=GeneratorSpec("tiny-dcgan"),
        backend=Backend(workers=2, ray="auto"),
    )
    np.testing.assert_array_equal(here, there)
    np.testing.assert_array_equal(labels, ray_labels)
    assert len(set(labels.tolist())) == 3
    assert not ray.is_initialized()
