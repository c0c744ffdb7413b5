"""The mapping networks and their training: shapes, export, and that training helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterguide.clustering import fit_kmeans
from clusterguide.errors import UserError
from clusterguide.features import extract_features
from clusterguide.fit import make_guide, sample_prior
from clusterguide.mapping import BatchedMapping, MappingConfig, MappingNetwork, fit_mappings, make_network
from clusterguide.metrics import norm_ratio, precision_recall
from clusterguide.tree import ClusterTree, Split


def test_paper_network_shape():
    net = make_network(MappingConfig.preset("paper", width=32), latent_dim=10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert len(norms) == 2
    assert net.eval()(torch.randn(4, 10)).shape == (4, 10)


def test_residual_network_starts_as_identity():
    net = MappingNetwork(6, 16, 6, residual=True).eval()
    e = torch.randn(5, 6)
    assert torch.allclose(net(e), e)


def test_batched_export_matches_batched_forward():
    model = BatchedMapping(3, 5, 8, 5, residual=False, generator=torch.Generator().manual_seed(0))
    model.train()
    model(torch.randn(3, 32, 5))  # move the running statistics away from their init
    model.eval()
    e = torch.randn(3, 7, 5)
    out = model(e)
    for c in range(3):
        assert torch.allclose(model.export(c)(e[c]), out[c], atol=1e-5)


def test_unknown_recipe_is_a_user_error():
    with pytest.raises(UserError, match="unknown mapping recipe"):
        MappingConfig.preset("magic")


def test_precision_recall_tell_same_from_different():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(size=(400, 3))
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(a + 50, b)
    assert p == 0 and r == 0
    p, r = precision_recall(a * 0.1, b)  # collapsed: precise but no recall
    assert p > 0.8 and r < 0.3


@pytest.fixture(scope="module")
def tiny_clusters(tiny_generator):
    G = tiny_generator
    z = sample_prior(G, 1500, seed=0)
    feats = extract_features(G, "block1", z)
    km = fit_kmeans(feats, 3, seed=0)
    split = Split("block1", km.centroids)
    return G, z, km, split


def fidelity(G, split, nets):
    tree = ClusterTree({"": split})
    out = []
    for c, net in enumerate(nets):
        with torch.no_grad():
            mapped = net.eval()(torch.randn(500, net.aux_dim, generator=torch.Generator().manual_seed(1)))
        out.append(tree.membership(G, mapped, str(c)).mean())
    return np.array(out)


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_training_beats_an_untrained_mapping(tiny_clusters, recipe):
    G, z, km, split = tiny_clusters
    latents = [z[torch.from_numpy(km.labels == c)] for c in range(3)]
    cfg = MappingConfig.preset(recipe, epochs=8 if recipe == "fast" else 15, width=64, batch_size=64)
    torch.manual_seed(0)
    untrained = [make_network(cfg, 16) for _ in range(3)]
    trained = fit_mappings(latents, cfg, guide=make_guide(G, split)).networks
    before, after = fidelity(G, split, untrained), fidelity(G, split, trained)
    assert after.mean() > before.mean() + 0.1, (before, after)
    if recipe == "fast":
        assert after.min() > 0.8, after
        # it keeps the spread of the cluster instead of collapsing to its mean
        for c, net in enumerate(trained):
            with torch.no_grad():
                mapped = net(torch.randn(500, 16)).numpy()
            assert norm_ratio(mapped, latents[c].numpy()) > 0.85
