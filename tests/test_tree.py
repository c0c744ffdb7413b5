"""Cluster paths and tree membership (paper §4.3): pure tree bookkeeping, then membership along a
path on the tiny generator, checked against k-means assignment done by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterguide.clustering import assign, fit_kmeans
from clusterguide.errors import UserError
from clusterguide.features import extract_features
from clusterguide.tree import ROOT, ClusterTree, Split, child_path, parent_of, path_key


def fake_split(k: int, layer: str = "block1") -> Split:
    return Split(layer, np.zeros((k, 4), np.float32))


@pytest.fixture()
def tree() -> ClusterTree:
    # root split into 12 (so "10" must sort after "2"), cluster 1 into 2, cluster 1/0 into 3
    return ClusterTree({ROOT: fake_split(12), "1": fake_split(2, "block2"), "1/0": fake_split(3, "block3")})


def test_paths_and_order(tree):
    clusters = tree.clusters()
    assert clusters[:7] == ["0", "1", "1/0", "1/0/0", "1/0/1", "1/0/2", "1/1"]
    assert clusters.index("2") < clusters.index("10")
    assert len(clusters) == 12 + 2 + 3
    assert "1" not in tree.leaves() and "1/0" not in tree.leaves()
    assert len(tree.leaves()) == 11 + 1 + 3
    assert tree.children("1") == ["1/0", "1/1"]
    assert tree.children("1/1") == []
    assert tree.ancestors("1/0/2") == ["1", "1/0", "1/0/2"]
    assert tree.depth("1/0/2") == 3
    assert [tree.layer_of(p) for p in ("1/0/2", "1/1", "7")] == ["block3", "block2", "block1"]
    assert parent_of("1/0/2") == "1/0" and parent_of("3") == ROOT
    assert child_path(ROOT, 4) == "4" and child_path("1/0", 2) == "1/0/2"
    assert path_key("1/10") > path_key("1/9")


@pytest.mark.parametrize("bad", ["12", "1/2", "1/0/3", "2/0", "", "x"])
def test_unknown_path_is_a_user_error(tree, bad):
    with pytest.raises(UserError, match="no cluster"):
        tree.check(bad)


@pytest.fixture(scope="module")
def two_level(tiny_generator):
    """A two-level tree on the tiny generator built by hand: block1 into 2, cluster 1 at block2 into 3."""
    G = tiny_generator
    z = G.sample_latents(600, seed=3)
    f1 = extract_features(G, "block1", z)
    km1 = fit_kmeans(f1, 2, seed=0)
    inside = torch.from_numpy(km1.labels == 1)
    f2 = extract_features(G, "block2", z[inside])
    km2 = fit_kmeans(f2, 3, seed=0)
    tree = ClusterTree({ROOT: Split("block1", km1.centroids), "1": Split("block2", km2.centroids)})
    return G, tree, z


def test_membership_follows_every_split_on_the_path(two_level):
    G, tree, z = two_level
    at1 = assign(extract_features(G, "block1", z), tree.splits[ROOT].centroids)
    at2 = assign(extract_features(G, "block2", z), tree.splits["1"].centroids)  # for every latent
    for j in range(3):
        expected = (at1 == 1) & (at2 == j)
        np.testing.assert_array_equal(tree.membership(G, z, f"1/{j}"), expected)
    np.testing.assert_array_equal(tree.membership(G, z, "0"), at1 == 0)
    np.testing.assert_array_equal(tree.membership(G, z, "1"), at1 == 1)


def test_leaves_partition_the_prior_and_leaf_of_agrees(two_level):
    G, tree, z = two_level
    masks = np.stack([tree.membership(G, z, leaf) for leaf in tree.leaves()])
    np.testing.assert_array_equal(masks.sum(0), np.ones(len(z)))  # each latent in exactly one leaf
    leaf_of = tree.leaf_of(G, z)
    for i, leaf in enumerate(tree.leaves()):
        assert all(leaf_of[r] == leaf for r in np.nonzero(masks[i])[0])
    assert masks.mean(1).min() > 0  # every leaf holds some of the prior


def test_membership_on_an_empty_batch(two_level):
    G, tree, _ = two_level
    assert tree.membership(G, torch.zeros(0, G.latent_dim), "1/2").shape == (0,)
