"""The mapping networks and their training: shapes, export, and that training helps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clusterguide.clustering import fit_kmeans
from clusterguide.errors import UserError
from clusterguide.features import extract_features, representation
from clusterguide.fitting import sample_prior
from clusterguide.guides import make_guide
from clusterguide.mapping import (
    RECIPES,
    BatchedMapping,
    MappingConfig,
    MappingNetwork,
    active_basis,
    conditional_matches,
    draw_inputs,
    fit_mappings,
    make_network,
    moment_basis,
    standard_normal,
)
from clusterguide.mapping.fold import SHIFTS, Faces, choose_shift, energy_distance, find_faces, fit_fold
from clusterguide.mapping.networks import reflect
from clusterguide.mapping.training import past_target
from clusterguide.metrics import norm_ratio, precision_recall, project
from clusterguide.seeding import randn_streams
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
    with pytest.raises(UserError, match="unknown mapping recipe"):
        fit_mappings([torch.randn(4, 3)], dataclasses.replace(MappingConfig.preset("fast"), recipe="magic"))


def test_cli_offers_every_recipe():
    """The CLI spells the recipes out (importing the mapping module would load FAISS at start-up)."""
    from clusterguide.cli.core import fit
    from clusterguide.cli.tree import refine

    for command in (fit, refine):
        option = next(p for p in command.params if p.name == "recipe")
        assert tuple(option.type.choices) == RECIPES


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


@pytest.mark.parametrize("recipe", ["fast", "residual", "paper"])
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


def test_moment_basis_finds_the_direction_that_bounds_a_region():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40000, 12, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(12, generator=g), dim=0)
    inside = z[z @ direction > 0.5]  # a half-space of the prior: only `direction` differs from it
    u = moment_basis(inside, 1)[:, 0]
    assert abs(float(u @ direction)) > 0.98


def test_active_basis_finds_the_direction_the_margin_depends_on():
    g = torch.Generator().manual_seed(1)
    a, b = torch.nn.functional.normalize(torch.randn(2, 10, generator=g), dim=1)
    b = torch.nn.functional.normalize(b - (b @ a) * a, dim=0)  # orthogonal to a

    def guide(z):  # two clusters split by a nonlinear boundary along b
        s = torch.tanh(z @ b)
        return torch.stack([s, -s], 1)

    z = torch.randn(3000, 10, generator=g)
    u = active_basis(z, guide, 0, 1, exclude=a[:, None])[:, 0]
    assert abs(float(u @ b)) > 0.98
    assert abs(float(u @ a)) < 1e-6  # the excluded direction is projected out


def test_conditional_matches_keep_each_latents_complement():
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(2, 8, 3, generator=g))[0]
    model = BatchedMapping(2, 8, 16, 8, residual=True, generator=g, basis=basis).eval()
    z = torch.randn(50, 8, generator=g)
    e = conditional_matches(model, 1, z, candidates=4, g=g)
    off = torch.eye(8) - basis[1] @ basis[1].T
    assert torch.allclose(e @ off, z @ off, atol=1e-5)
    assert not torch.allclose(e, z)  # the subspace coordinates are drawn


def test_conditional_matches_draw_only_the_drawn_columns():
    # 5 columns, of which IMLE draws the first 2; the other 3 (correction directions) keep z's own
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(2, 8, 5, generator=g))[0]
    model = BatchedMapping(2, 8, 16, 8, residual=True, generator=g, basis=basis, drawn=[2, 2]).eval()
    z = torch.randn(50, 8, generator=g)
    e = conditional_matches(model, 0, z, candidates=4, g=g)
    drawn = basis[0][:, :2]
    off = torch.eye(8) - drawn @ drawn.T
    assert torch.allclose(e @ off, z @ off, atol=1e-5)
    assert not torch.allclose(e @ drawn, z @ drawn)


def test_clusters_that_draw_in_more_directions_get_more_candidates():
    from clusterguide.mapping.matching import BASE_DRAWN, candidates_for

    config = MappingConfig(candidates=32, candidate_growth=2.0, candidates_max=512)
    assert candidates_for(config, 3) == candidates_for(config, BASE_DRAWN) == 32
    assert [candidates_for(config, BASE_DRAWN + j) for j in (1, 2, 4, 6)] == [64, 128, 512, 512]
    assert candidates_for(dataclasses.replace(config, candidate_growth=1.0), 9) == 32
    assert candidates_for(dataclasses.replace(config, candidates_max=8), 9) == 32  # never fewer
    for recipe in ("paper", "residual"):
        assert MappingConfig.preset(recipe).candidate_growth == 1.0


def test_more_candidates_match_closer_where_a_cluster_draws_in_many_directions():
    # why the count grows: in 8 drawn directions the nearest of 32 candidates is far from its
    # latent, the nearest of 256 much less so (the mapping starts as the identity, so the gap is
    # the candidates' own)
    g = torch.Generator().manual_seed(5)
    basis = torch.linalg.qr(torch.randn(1, 12, 8, generator=g))[0]
    model = BatchedMapping(1, 12, 16, 12, residual=True, generator=g, basis=basis, drawn=[8]).eval()
    z = torch.randn(400, 12, generator=g)
    with torch.no_grad():
        gaps = [
            (model(conditional_matches(model, 0, z, candidates=m, g=g)[None])[0] - z).norm(dim=1).mean()
            for m in (32, 256)
        ]
    assert gaps[1] < 0.85 * gaps[0]


def test_a_clusters_last_layer_output_is_the_same_with_and_without_autograd():
    # without autograd batch norm runs in place (conditional matching's many candidate rows)
    g = torch.Generator().manual_seed(6)
    basis = torch.linalg.qr(torch.randn(2, 8, 3, generator=g))[0]
    model = BatchedMapping(2, 8, 16, 8, residual=True, generator=g, basis=basis)
    with torch.no_grad():
        model.w3.normal_(generator=g)  # a residual mapping starts writing nothing
        for _ in range(5):  # running statistics away from their start
            model(3 * torch.randn(2, 64, 8, generator=g) + 1)
    model.eval()
    e = torch.randn(300, 8, generator=g)
    with_grad = model.last_layer_output(e, 1)
    with torch.no_grad():
        without = model.last_layer_output(e, 1)
    assert torch.equal(with_grad, without)
    assert not torch.equal(without, model.last_layer_output(e, 0).detach())


def test_correction_directions_lift_the_keep_to_the_fidelity_target():
    # a cluster bounded along two directions: U_c holds one, the correction basis must add the other
    from clusterguide.mapping.bases import complement_keep, correction_basis

    g = torch.Generator().manual_seed(4)
    a, b = torch.eye(12)[0], torch.eye(12)[1]

    def guide(z):
        inside = torch.minimum(z @ a, z @ b)
        return torch.stack([inside, -inside], 1)

    z = torch.randn(20_000, 12, generator=g)
    z = z[(z @ a > 0) & (z @ b > 0)][:2000]
    cfg = MappingConfig.preset("fast", hinge_dims=4, fidelity_target=0.97)
    u = a[:, None]
    v = correction_basis(z, guide, 0, cfg, standard_normal(12), u)
    assert 1 <= v.shape[1] <= 4
    assert float((u.T @ v).abs().max()) < 1e-5  # orthogonal to U_c
    assert float((v.T @ b).norm()) > 0.95  # the missing bound is among them
    keep = complement_keep(z[:1000], torch.cat([u, v], 1), guide, 0, standard_normal(12), g)
    assert keep >= 0.97
    assert complement_keep(z[:1000], u, guide, 0, standard_normal(12), g) < 0.8
    off = MappingConfig.preset("fast", hinge_dims=0)
    assert correction_basis(z, guide, 0, off, standard_normal(12), u).shape[1] == 0


def test_fast_mapping_moves_latents_only_inside_its_subspace(tiny_clusters):
    G, z, km, split = tiny_clusters
    latents = [z[torch.from_numpy(km.labels == c)] for c in range(3)]
    # at most 2 + 8 drawn and 2 correction directions: fewer than the 16 of the latent space; the
    # fold after training moves every coordinate (it is tested on its own in test_fit_quality.py)
    cfg = MappingConfig.preset("fast", epochs=3, width=32, batch_size=64, hinge_dims=2, fold=False)
    nets = fit_mappings(latents, cfg, guide=make_guide(G, split)).networks
    dims = cfg.moment_dims + cfg.max_active_dims + cfg.hinge_dims
    for net in nets:
        assert net.residual
        assert torch.linalg.matrix_rank(net.fc3.weight) <= dims
        e = torch.randn(200, 16)
        with torch.no_grad():
            moved = net(e) - e
        assert moved.abs().max() > 0.05  # it did learn something
        # every move lies in the column space of the last layer: the rest of e passes through
        q = torch.linalg.svd(net.fc3.weight, full_matrices=False).U[:, :dims]
        assert torch.allclose(moved @ q @ q.T, moved, atol=1e-4)


def test_fast_mapping_covers_its_cluster(tiny_generator):
    """The default recipe lands in its cluster and keeps its spread: recall against the cluster's
    exact samples close to what independent exact samples reach (a collapsed mapping gets none, an
    untrained one lands in the cluster only about 1/k of the time)."""
    G = tiny_generator
    z = sample_prior(G, 3000, seed=0)
    feats = extract_features(G, "block1", z)
    km = fit_kmeans(feats, 3, seed=0)
    split = Split("block1", km.centroids)
    tree = ClusterTree({"": split})
    latents = [z[torch.from_numpy(km.labels == c)] for c in range(3)]
    nets = fit_mappings(
        latents, MappingConfig.preset("fast", epochs=8, width=64, batch_size=64), guide=make_guide(G, split)
    ).networks
    for c, net in enumerate(nets):
        with torch.no_grad():
            mapped = net.eval()(torch.randn(400, 16, generator=torch.Generator().manual_seed(1)))
            mapped_feats = representation(G, mapped, "block1").numpy()
        exact = feats[km.labels == c]
        ref, fake, heldout = project(exact[:400], mapped_feats, exact[400:800])
        _, recall = precision_recall(fake, ref)
        _, ceiling = precision_recall(heldout, ref)
        assert tree.membership(G, mapped, str(c)).mean() > 0.95
        assert recall > ceiling - 0.06, (c, recall, ceiling)


def test_residual_inputs_come_from_the_generators_prior():
    """draw_inputs: a residual mapping takes G's own prior, the paper's mapping a standard Gaussian,
    and for a N(0, I) prior both are the same numbers (so Gaussian generators are unaffected)."""
    residual, paper = MappingNetwork(6, 8, 6, residual=True), MappingNetwork(6, 8, 6)

    def truncated(n, seed, start):
        return randn_streams(seed, start, n, 6).clamp(-1, 1) * 0.3

    torch.testing.assert_close(draw_inputs(residual, truncated, 7, 10, 5), truncated(5, 7, 10))
    torch.testing.assert_close(draw_inputs(paper, truncated, 7, 10, 5), randn_streams(7, 10, 5, 6))
    gaussian = lambda n, seed, start: randn_streams(seed, start, n, 6)  # noqa: E731
    torch.testing.assert_close(
        draw_inputs(residual, gaussian, 7, 10, 5), draw_inputs(paper, gaussian, 7, 10, 5)
    )


@pytest.mark.parametrize("recipe", ["fast", "residual"])
def test_residual_recipes_learn_on_a_non_gaussian_prior(recipe):
    """A prior of scale 0.3 (a truncated BigGAN z, a W space): with the prior passed in, the mapped
    samples keep the cluster's scale; fed N(0, I) inputs the same recipe lands at about 3x it."""
    g = torch.Generator().manual_seed(0)
    dim, scale = 12, 0.3
    z = torch.randn(3000, dim, generator=g) * scale
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    labels = (z @ direction > 0).long()
    latents = [z[labels == c] for c in range(2)]

    def guide(x):  # the clusters are the two half-spaces of `direction`
        s = x @ direction / scale
        return torch.stack([-s, s], 1)

    def prior(n, gen):
        return torch.randn(n, dim, generator=gen) * scale

    # without the fold, which moves any mapping to its cluster's moments and would hide a wrong prior
    cfg = MappingConfig.preset(recipe, epochs=6, width=32, batch_size=128, fold=False)
    ratios = {}
    for name, p in (("prior", prior), ("gaussian", None)):
        nets = fit_mappings(latents, cfg, guide=guide, prior=p).networks
        e = prior(1000, torch.Generator().manual_seed(1)) if name == "prior" else torch.randn(1000, dim)
        with torch.no_grad():
            mapped = [net.eval()(e) for net in nets]
        ratios[name] = [norm_ratio(m.numpy(), latents[c].numpy()) for c, m in enumerate(mapped)]
        if name == "prior":
            for c, m in enumerate(mapped):
                assert (guide(m).argmax(1) == c).float().mean() > 0.9
    assert all(0.85 < r < 1.15 for r in ratios["prior"]), ratios
    assert all(r > 2 for r in ratios["gaussian"]), ratios


def test_adapters_say_whether_their_prior_is_standard_normal(tiny_generator):
    from clusterguide.generators import load_generator

    assert tiny_generator.prior_is_standard_normal
    assert not load_generator("biggan", "random:biggan-deep-128").prior_is_standard_normal  # truncated
    z_space = load_generator("stylegan2", "random:stylegan2-cifar10-32x32")
    w_space = load_generator("stylegan2", "random:stylegan2-cifar10-32x32", latent_space="w")
    assert z_space.prior_is_standard_normal and not w_space.prior_is_standard_normal
    draws = tiny_generator.prior()(4, torch.Generator().manual_seed(0))
    assert draws.shape == (4, tiny_generator.latent_dim)


def test_hinge_on_strays_only_has_the_full_hinges_loss_and_gradient(tiny_clusters):
    """The hinge runs the guide with autograd only on samples outside their cluster: the loss and
    every parameter's gradient must equal the hinge computed on all samples."""
    from clusterguide.mapping.training import _consistency

    G, _, _, split = tiny_clusters
    guide = make_guide(G, split)
    cfg = MappingConfig(guide_batch=48)
    model = BatchedMapping(3, 16, 32, 16, True, torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # a mapping that moves samples, so some land outside and some inside
        model.w3.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    norms = torch.ones(3)
    hinge, inside, _ = _consistency(
        model, guide, 3, cfg, standard_normal(16), torch.Generator().manual_seed(1), "cpu", norms
    )
    model.zero_grad()
    hinge.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]

    e = standard_normal(16)(3 * 48, torch.Generator().manual_seed(1)).reshape(3, 48, -1)
    logits = guide(model(e).reshape(3 * 48, -1))
    target = torch.arange(3).repeat_interleave(48)
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).max(1).values
    full = F.relu(others - own).mean()
    model.zero_grad()
    full.backward()
    assert 0 < float(inside.min()) and float(inside.max()) < 1, inside  # strays and insiders both
    assert torch.allclose(inside, (own <= others).logical_not().reshape(3, 48).float().mean(1))
    assert torch.allclose(hinge, full, atol=1e-6)
    for fast, p in zip(fast_grads, model.parameters()):
        assert torch.allclose(fast, p.grad, atol=1e-5)


def test_a_fidelity_target_extends_training_only_while_it_is_missed_and_each_cluster_stops(tiny_clusters):
    G, z, km, split = tiny_clusters
    latents = [z[torch.from_numpy(km.labels == c)] for c in range(3)]
    base = dict(epochs=2, width=32, batch_size=64, max_epoch_factor=3.0)
    guide = make_guide(G, split)
    unreachable = fit_mappings(latents, MappingConfig(fidelity_target=1.01, **base), guide=guide)
    assert unreachable.epochs == 6  # never met: runs to 3 x epochs
    # ... and every cluster keeps its best epoch from `epochs` on
    assert all(2 <= e <= 6 for e in unreachable.stopped_at) and unreachable.best_epoch == [0, 1, 2]
    met = fit_mappings(latents, MappingConfig(fidelity_target=0.01, **base), guide=guide)
    assert met.epochs == 2  # met at once: stops at epochs
    assert met.stopped_at == [2, 2, 2] and met.best_epoch == []  # each cluster stopped there
    # with draw_on_stall, refreshing every epoch, a target out of reach is short at any rate: every
    # cluster draws more directions (the bases do not depend on staleness or on draw_on_stall, so
    # the met fit's counts are where they start)
    grow = MappingConfig(fidelity_target=1.01, staleness=1, draw_on_stall=True, **base)
    grown = fit_mappings(latents, grow, guide=guide)
    assert met.drawn is not None and grown.drawn is not None
    assert all(u > m for u, m in zip(grown.drawn, met.drawn)), (grown.drawn, met.drawn)
    off = fit_mappings(latents, MappingConfig(fidelity_target=0.0, **base), guide=guide)
    assert off.epochs == 2  # no target: exactly epochs
    # clusters that stop together keep the last epoch
    together = MappingConfig(fidelity_target=1.01, cluster_stop=False, **base)
    assert fit_mappings(latents, together, guide=guide).stopped_at == [6, 6, 6]  # the last epoch


def test_a_shrink_scales_the_output_along_its_directions_only():
    net = MappingNetwork(4, 8, 4, residual=True).eval()  # starts as the identity
    e = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    directions = torch.eye(4)[:, :2]
    center = torch.tensor([1.0, -1.0, 5.0, 5.0])
    net.shrink_toward(0.5, center, directions)
    with torch.no_grad():
        out = net(e)
    assert torch.allclose(out[:, :2], center[:2] + 0.5 * (e[:, :2] - center[:2]), atol=1e-6)
    assert torch.equal(out[:, 2:], e[:, 2:])  # off the directions: untouched (centre included)
    # the shrink is part of the state: a network given the same state maps the same
    again = MappingNetwork(4, 8, 4, residual=True)
    state = net.state_dict()
    again.shrink_toward(state["shrink_scale"], state["shrink_center"], state["shrink_basis"])
    again.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(again.eval()(e), out)
    assert "shrink_basis" not in MappingNetwork(4, 8, 4, residual=True).state_dict()


def test_choose_shrink_takes_the_largest_factor_that_gets_past_the_target():
    from clusterguide.mapping.training import choose_shrink

    net = MappingNetwork(3, 8, 3, residual=True).eval()  # the identity: mapped samples are e
    e = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(0))
    directions = torch.eye(3)[:, :1]

    def inside(x):  # the cluster: |x_0| < 1, which 68% of N(0, 1) falls in
        return x[:, 0].abs() < 1

    # 80% (+ a standard error) needs |e_0| < 1/s for s <= 0.78: 0.75 (P = 0.818), not 0.8 (0.789)
    scale, center = choose_shrink(net, directions, inside, e, target=0.8, floor=0.5)
    assert scale == pytest.approx(0.75) and torch.allclose(center, e.mean(0))
    # a target no factor down to the floor reaches: the one with the highest share
    scale, _ = choose_shrink(net, directions, inside, e, target=0.99, floor=0.9)
    assert scale == pytest.approx(0.9)
    # ... and never a factor below the floor, which need not be a multiple of the step
    assert choose_shrink(net, directions, inside, e, target=0.99, floor=0.52)[0] == pytest.approx(0.55)
    # already past the target: no shrink
    assert choose_shrink(net, directions, inside, e, target=0.6, floor=0.5)[0] == 1.0


def test_clusters_that_never_stop_are_shrunk_toward_the_target(tiny_clusters):
    G, z, km, split = tiny_clusters
    latents = [z[torch.from_numpy(km.labels == c)] for c in range(3)]
    # the shrink alone (a fold after it moves the samples to the cluster's moments again)
    base = dict(epochs=2, width=32, batch_size=64, max_epoch_factor=1.0, fold=False)
    guide = make_guide(G, split)
    unshrunk = fit_mappings(
        latents, MappingConfig(fidelity_target=1.01, shrink_floor=1.0, **base), guide=guide
    )
    assert unshrunk.shrink == [1.0, 1.0, 1.0]
    shrunk = fit_mappings(latents, MappingConfig(fidelity_target=1.01, shrink_floor=0.5, **base), guide=guide)
    assert shrunk.best_epoch == [0, 1, 2] and shrunk.shrink is not None
    assert all(0.5 <= s <= 1 for s in shrunk.shrink) and min(shrunk.shrink) < 1, shrunk.shrink
    # the same training (the shrink is chosen afterwards), and on fresh samples the shrunk mappings
    # land inside their clusters at least as often
    for a, b, s in zip(unshrunk.networks, shrunk.networks, shrunk.shrink):
        assert torch.equal(a.fc3.weight, b.fc3.weight)
        assert (b.shrink_basis is not None) == (s < 1)
    before, after = fidelity(G, split, unshrunk.networks), fidelity(G, split, shrunk.networks)
    assert (after >= before - 0.01).all() and after.mean() > before.mean(), (before, after)
    # a cluster that stops and stays past the target on fresh samples is not shrunk, and the
    # paper's recipe has no subspace to shrink
    met = fit_mappings(latents, MappingConfig(fidelity_target=0.01, **base), guide=guide)
    assert met.best_epoch == [] and met.shrink == [1.0, 1.0, 1.0]
    paper = fit_mappings(latents, MappingConfig.preset("paper", epochs=1, width=16), guide=guide)
    assert paper.shrink is None and all(n.shrink_basis is None for n in paper.networks)


def test_stopped_clusters_are_checked_on_fresh_samples_too(tiny_clusters, monkeypatch):
    from clusterguide.mapping import training

    G, z, km, split = tiny_clusters
    latents = [z[torch.from_numpy(km.labels == c)] for c in range(3)]
    base = dict(epochs=2, width=32, batch_size=64, max_epoch_factor=1.0, fidelity_target=0.01)
    guide = make_guide(G, split)
    checked = []
    choose = training.choose_shrink

    def recording(net, directions, inside, e, target, floor):
        checked.append((e.shape[0], target, floor))
        return choose(net, directions, inside, e, target, floor)

    monkeypatch.setattr(training, "choose_shrink", recording)
    # every cluster stops (a target of 1%): with shrink_stopped each is still checked, on
    # 8 x fidelity_check fresh samples against the target and floor it was trained for ...
    result = fit_mappings(latents, MappingConfig(shrink_floor=0.6, **base), guide=guide)
    assert result.best_epoch == []
    assert checked == [(8 * 256, 0.01, 0.6)] * 3
    # a stopped cluster the check finds short is shrunk and recorded like a fallback
    monkeypatch.setattr(training, "choose_shrink", lambda net, d, inside, e, *rest: (0.8, net(e).mean(0)))
    short = fit_mappings(latents, MappingConfig(**base), guide=guide)
    assert short.best_epoch == [] and short.shrink == [0.8, 0.8, 0.8]
    assert all(
        n.shrink_scale is not None and float(n.shrink_scale) == pytest.approx(0.8) for n in short.networks
    )
    # ... and without shrink_stopped (round eight's recipe, what older run folders load with),
    # none is checked
    monkeypatch.setattr(training, "choose_shrink", recording)
    checked.clear()
    fit_mappings(latents, MappingConfig(shrink_stopped=False, **base), guide=guide)
    assert checked == []


def test_cluster_state_round_trips_one_cluster_and_leaves_the_others():
    model = BatchedMapping(3, 4, 8, 4, True, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.w3.normal_(generator=torch.Generator().manual_seed(1))
    before = {n: getattr(model, n).clone() for n in model.PER_CLUSTER}
    state = model.cluster_state(1)
    with torch.no_grad():
        for n in model.PER_CLUSTER:
            getattr(model, n).add_(1.0)
    model.load_cluster_state(1, state)
    for n in model.PER_CLUSTER:
        assert torch.equal(getattr(model, n)[1], before[n][1]), n
        assert torch.equal(getattr(model, n)[0], before[n][0] + 1), n


def test_a_cluster_stops_at_its_first_confirmed_pass_and_one_that_never_does_keeps_its_best():
    from clusterguide.mapping.training import ClusterStops

    model = BatchedMapping(3, 4, 8, 4, True, torch.Generator().manual_seed(0))
    stops = ClusterStops(target=0.95, checked=256, confirm=1024)
    asked = []

    def more(shares):
        def draw(n):
            asked.append(n)
            return torch.tensor(shares)

        return draw

    def mark(value):
        with torch.no_grad():
            model.w3.fill_(value)

    mark(1.0)
    # cluster 0 passes and is confirmed; 1 passes the check (0.97 >= 0.964) but not the pooled
    # 1,280 samples (0.938); 2 is short
    assert stops.update(model, 15, torch.tensor([0.99, 0.97, 0.90]), more([0.97, 0.93, 0.5])) == [0]
    assert asked == [1024] and stops.active(3).tolist() == [False, True, True]
    mark(2.0)
    # nothing passes: no confirmation drawn; 2's best moves to this epoch, 1's stays at 15
    assert stops.update(model, 16, torch.tensor([0.5, 0.92, 0.93]), more([0.0, 0.0, 0.0])) == []
    assert asked == [1024] and not stops.done(3)
    mark(3.0)
    assert stops.restore(model, 16) == [15, 15, 16]
    assert [float(model.w3[c].detach().mean()) for c in range(3)] == [1.0, 1.0, 2.0]
    mark(4.0)
    stops.update(model, 17, torch.tensor([0.5, 0.99, 0.99]), more([0.0, 0.99, 0.99]))
    assert stops.done(3)


def test_stopped_clusters_leave_the_hinge_and_the_others_train_as_before(tiny_clusters):
    from clusterguide.mapping.training import _consistency

    G, _, _, split = tiny_clusters
    calls = []

    def guide(z):
        calls.append(z.shape[0])
        return make_guide(G, split)(z)

    cfg = MappingConfig(guide_batch=48)
    model = BatchedMapping(3, 16, 32, 16, True, torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        model.w3.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))

    def run(active):
        model.zero_grad()
        hinge, inside, _ = _consistency(
            model,
            guide,
            3,
            cfg,
            standard_normal(16),
            torch.Generator().manual_seed(1),
            "cpu",
            torch.ones(3),
            None,
            active,
        )
        hinge.backward()
        return inside, model.w3.grad.clone()

    inside_all, grad_all = run(None)
    calls.clear()
    inside_some, grad_some = run(torch.tensor([True, False, True]))
    assert calls[0] == 2 * 48  # the no-grad pass skips cluster 1's samples
    assert inside_some[1] == 1 and torch.allclose(inside_some[[0, 2]], inside_all[[0, 2]])
    assert torch.allclose(grad_some[[0, 2]], grad_all[[0, 2]], atol=1e-6)
    assert float(grad_some[1].abs().sum()) == 0 and float(grad_all[1].abs().sum()) > 0


def test_spread_is_unbiased_at_the_clusters_own_moments_and_positive_when_contracted():
    from clusterguide.mapping.training import _spread

    g = torch.Generator().manual_seed(5)
    k, m, w = 2, 64, 6
    basis = torch.eye(w)[None].repeat(k, 1, 1)
    mean, cov = torch.zeros(k, w), torch.eye(w)[None].repeat(k, 1, 1)

    def average(scale: float) -> float:
        draws = [_spread(scale * torch.randn(k, m, w, generator=g), basis, mean, cov) for _ in range(400)]
        return float(torch.stack(draws).mean())

    contracted = average(0.7)
    assert contracted > 1.0  # about 6 x (0.49 - 1)^2 = 1.56
    # the squared error of 64-sample moments would average about 0.7 here; the split estimate is ~0
    assert abs(average(1.0)) < 0.1 * contracted


def test_hinge_weights_grow_as_a_cluster_nears_or_falls_short_of_the_target():
    from clusterguide.mapping.training import hinge_weights

    w = hinge_weights(torch.tensor([1.0, 0.98, 0.9625, 0.95, 0.90, 0.5]), target=0.95, most=3.0)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 3.0]))


def test_steered_weights_rise_while_a_cluster_is_short_and_fall_once_it_is_past():
    from clusterguide.mapping.training import steer_boost

    config = MappingConfig(fidelity_target=0.95, hinge_boost=3.0, hinge_step=2.0, hinge_boost_max=10.0)
    most = torch.tensor([3.0, 8.0, 8.0, 8.0, 4.0])
    inside = torch.tensor([0.90, 0.90, 0.955, 0.99, 0.99])
    # short: up (capped at 10); within a point above: kept; further above: down (floored at 3)
    assert torch.allclose(steer_boost(most, inside, config), torch.tensor([6.0, 10.0, 8.0, 4.0, 3.0]))
    fixed = dataclasses.replace(config, hinge_step=1.0)
    assert torch.equal(steer_boost(most, inside, fixed), most)
    # on stall only: a short cluster whose share rose keeps its weight; letting go is unchanged
    rising = torch.tensor([True, False, True, True, False])
    assert torch.allclose(steer_boost(most, inside, config, rising), torch.tensor([3.0, 10.0, 8.0, 4.0, 3.0]))


def test_a_cluster_that_would_stay_short_at_its_rate_draws_twice_as_many_directions():
    from clusterguide.mapping.training import draw_more, falls_short

    # shares over 4 epochs, windows of 2: cluster 0 flat at 0.85; 1 climbing 0.02 an epoch (its
    # last window's mean 0.92 projects to 0.96 two epochs on, but 0.92 with none left); 2 climbing
    # too slowly; 3 past the target; 4 falling (counts as flat, not as a projected drop)
    history = [
        torch.tensor([0.85, 0.87, 0.80, 0.97, 0.90]),
        torch.tensor([0.85, 0.89, 0.80, 0.97, 0.90]),
        torch.tensor([0.85, 0.91, 0.81, 0.97, 0.88]),
        torch.tensor([0.85, 0.93, 0.81, 0.97, 0.88]),
    ]
    assert falls_short(history[:3], 2, 2, 0.95).tolist() == [False] * 5  # one window only
    assert falls_short(history, 2, 2, 0.95).tolist() == [True, False, True, False, True]
    assert falls_short(history, 2, 0, 0.95).tolist() == [True, True, True, False, True]
    stalled = torch.tensor([True, True, False, True])
    # doubled, capped at the cluster's whole subspace; the others unchanged
    assert draw_more([4, 30, 3, 2], [36, 32, 10, 10], stalled) == [8, 32, 3, 4]


def test_the_fidelity_check_maps_as_the_sampler_does():
    from clusterguide.mapping.training import inside_share

    g = torch.Generator().manual_seed(0)
    model = BatchedMapping(2, 4, 8, 4, residual=True, generator=g)
    with torch.no_grad():  # a last layer that moves every sample along the first axis
        model.w3.copy_(torch.randn(model.w3.shape, generator=g))
        model.mean1.fill_(5.0)  # running statistics far from any batch's: only eval mode uses them
    model.train()

    def guide(z):  # cluster 0: first coordinate below 0, cluster 1: above
        return torch.stack([-z[:, 0], z[:, 0]], 1)

    share = inside_share(model, guide, 2, standard_normal(4), torch.Generator().manual_seed(1), "cpu", 500)
    assert model.training  # left as it was
    model.eval()
    e = standard_normal(4)(1000, torch.Generator().manual_seed(1)).reshape(2, 500, 4)
    with torch.no_grad():
        mapped = model(e)
    expected = torch.stack([(mapped[0, :, 0] < 0).float().mean(), (mapped[1, :, 0] > 0).float().mean()])
    assert torch.allclose(share, expected)
    model.train()
    with torch.no_grad():
        train_mode = model(e)
    assert not torch.allclose(train_mode, mapped)  # the check would differ in training mode


# --- the fold (mapping/fold.py) ---------------------------------------------------------------


def _slab_logits(x: torch.Tensor) -> torch.Tensor:
    """Three clusters of N(0, I) in 3-d: 0 is the slab |x_0| < 1 (68% of the prior), 1 and 2 the
    two sides beyond it; the assignment margin of 0 is 1 - |x_0|."""
    return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] - 1, -x[:, 0] - 1], 1)


def test_reflect_mirrors_rows_outside_a_face_and_leaves_the_rest():
    normals = torch.tensor([[1.0, 0.0]])  # inside: x_0 >= -1
    x = torch.tensor([[-3.0, 2.0], [0.5, -1.0], [-1.0, 4.0]])
    out = reflect(x, normals, torch.tensor([-1.0]))
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 4.0]]))


def test_faces_are_the_boundaries_the_samples_cross():
    x = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0)) * 1.5
    faces = find_faces(_slab_logits, 0, x)
    assert faces.normals.shape == (2, 3)  # one per neighbour crossed, none for the third axis
    # inward normals +-e_0, at the boundary points x_0 = -+1 (the Newton steps aim 0.05 inside)
    expected = {1: torch.tensor([-1.0, 0, 0]), -1: torch.tensor([1.0, 0, 0])}
    for normal, offset in zip(faces.normals, faces.offsets):
        side = -1 if normal[0] > 0 else 1
        assert float(normal @ expected[side]) > 0.999
        assert abs(float(offset) - (-0.95)) < 0.01
    # a cluster nothing leaves has no faces
    assert find_faces(_slab_logits, 0, x[x[:, 0].abs() < 0.9]).normals.shape == (0, 3)

    # one neighbour on both sides (as "outside the parent" is for a refined cluster): its
    # crossings disagree, and are split into the two faces
    def one_outside(z: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(z[:, 0]), z[:, 0].abs() - 1], 1)

    split = find_faces(one_outside, 0, x)
    assert split.normals.shape == (2, 3)
    assert sorted(round(float(n[0])) for n in split.normals) == [-1, 1]


def test_a_fold_gives_a_narrow_mapping_the_clusters_spread_and_keeps_it_inside():
    """A mapping that sits deep inside its slab (a third of the exact variance) gets most of the
    cluster's spread back and still lands inside; a fold that would let more samples out than the mapping
    does is not kept."""
    g = torch.Generator().manual_seed(1)
    prior = torch.randn(60_000, 3, generator=g)
    latents = prior[prior[:, 0].abs() < 1][:4000]
    net = MappingNetwork(3, 8, 3, residual=True).eval()  # the identity (its last layer is zero)
    net.shrink_toward(0.3, torch.zeros(3), torch.eye(3)[:, :1])  # x_0 at 0.3 x the prior's
    fit_inputs, check_inputs = prior[:4096], prior[10_000:12_048]
    need = past_target(0.95, check_inputs.shape[0])
    with torch.no_grad():
        before = net(check_inputs)
    choice = fit_fold(net, latents, _slab_logits, 0, fit_inputs, check_inputs, need)
    assert choice.kept and choice.faces == 2 and choice.share >= need
    fresh = torch.randn(4000, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        after = net(fresh)
    assert float((after[:, 0].abs() < 1).float().mean()) > 0.95
    exact_var = float(latents[:, 0].var())  # about 0.29
    assert float(before[:, 0].var()) < 0.35 * exact_var  # 0.3^2 of the prior's, a third of the slab's
    # the Gaussian with the slab's variance spills 7.5% of its mass, and the reflection puts it
    # back nearer the middle: most of the spread comes back, not all (a uniform slab is wider)
    assert 0.7 * exact_var < float(after[:, 0].var()) < 1.05 * exact_var

    # a cluster of many thin bands (sin(10 x_0) > -0.9, 86% of the prior) has no few faces: a
    # fold would let far more out than a mapping kept well inside one band
    def bands(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(x[:, 0]), -0.9 - torch.sin(10 * x[:, 0])], 1)

    inner = MappingNetwork(3, 8, 3, residual=True).eval()
    inner.shrink_toward(0.01, torch.zeros(3), torch.eye(3)[:, :1])  # x_0 within 0.04 of 0
    in_bands = prior[torch.sin(10 * prior[:, 0]) > -0.9][:4000]
    refused = fit_fold(inner, in_bands, bands, 0, fit_inputs, check_inputs, need)
    assert refused.faces > 0 and not refused.kept and refused.share < min(need, refused.share_before)
    assert inner.fold_matrix is None


def test_the_fold_pulls_its_faces_in_by_the_least_shift_that_keeps_samples_inside():
    """Faces placed outside the slab's true boundary (|x_0| = 1.2 instead of 1) leave the samples
    between the two outside; the shift chosen is the least that brings the share to the need."""
    x = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(3)) * 0.55
    faces = Faces(
        torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]), torch.tensor([-1.2, -1.2]), torch.tensor([0.1, 0.1])
    )

    def inside(z: torch.Tensor) -> torch.Tensor:
        return z[:, 0].abs() < 1

    def share_at(shift: float) -> float:
        return float(inside(reflect(x, faces.normals, faces.offsets + shift * faces.spreads)).float().mean())

    need = 0.97  # short of what the right faces (a shift of 2) reach
    shift, share = choose_shift(x, faces, inside, need)
    assert share == pytest.approx(share_at(shift)) and share >= need
    assert shift > 0 and share_at(SHIFTS[SHIFTS.index(shift) - 1]) < need  # the least that does
    assert share_at(0.0) < 0.96  # the misplaced faces alone let a few percent out
    assert share < share_at(2.0)  # a larger shift would keep more inside, but is not needed
    # a need no shift reaches: the best share of all
    shift, share = choose_shift(x, faces, inside, 1.01)
    assert share == pytest.approx(max(share_at(s) for s in SHIFTS))


class _HalfNormal(MappingNetwork):
    """A mapping that is exact for the half-space x_0 > 0: e with its first coordinate made positive."""

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.cat([e[:, :1].abs(), e[:, 1:]], 1)


def test_a_fold_that_would_move_samples_away_from_the_cluster_is_not_kept():
    """Half the prior (x_0 > 0) reaches into the prior's tail, which a Gaussian with the half's
    moments does not: folded, the samples all land inside but are farther from the cluster's
    latents than the mapping's own, and the fold is not kept."""
    g = torch.Generator().manual_seed(4)
    prior = torch.randn(20_000, 3, generator=g)
    latents = prior[prior[:, 0] > 0][:4000]

    def half(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0], -x[:, 0]], 1)

    net = _HalfNormal(3, 8, 3, residual=True).eval()
    need = past_target(0.95, 2048)
    choice = fit_fold(net, latents, half, 0, prior[:4096], prior[10_000:12_048], need)
    assert choice.faces == 1 and choice.share >= need  # the fold alone would pass the check
    assert not choice.kept and net.fold_matrix is None
    # the distance it is judged by: near zero between two samples of one distribution, and
    # growing with a shift
    other = prior[prior[:, 0] > 0][4000:8000]
    assert energy_distance(latents[:2000], other[:2000]) < 0.01
    assert energy_distance(latents[:2000], other[:2000] + 0.3) > 0.05
