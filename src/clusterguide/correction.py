"""The ``corrected`` sampler: a cluster's mapped latents moved to the cluster's own first two
moments, then any that fall outside the cluster moved back inside by Newton steps on its
assignment margin.

Why (docs/benchmarks.md, issue 12 rounds thirteen and fourteen): on large clusters that draw in
many directions the learned mappings sit about twice as deep inside the cluster as exact samples
and leave its rim unsampled (recall 0.6-0.9 of the ceiling). Moving them by the linear optimal
transport map from their own Gaussian moments to the cluster's restores the spread (recall at the
ceiling) but spills a quarter of them over the boundary; the projection puts those on the
boundary. The price is a pass through the first layers with a gradient for the spilled samples
(a few per sample, against 1/p_c passes for exact rejection sampling), and fidelity is then high by
construction: report it apart from the mapping's own.

:class:`MomentMap` is fitted per cluster when the run is fitted (:func:`fit_moment_map`, from the
cluster's latents and the mapping's samples) and saved in the run folder; :func:`project_inside`
needs only the tree and the generator.
"""

from __future__ import annotations

import torch

from clusterguide.generators.base import GeneratorAdapter
from clusterguide.guides import make_path_guide
from clusterguide.mapping import MappingNetwork, draw_inputs
from clusterguide.mapping.fold import NEWTON_STEPS, NEWTON_TARGET, move_inside
from clusterguide.mapping.inputs import assignment_margin
from clusterguide.moments import MomentMap, fit_moment_map
from clusterguide.tree import ClusterTree, parent_of

# Samples of the mapping its moments are estimated from (the cluster's come from its latents).
MAPPED_SAMPLES = 8192
# Newton steps aim a stray sample at this assignment margin (in the guide's units, where a tenth of
# the mean squared gap between centroids is 1): just inside the boundary. One or two steps reach it
# for almost every sample (the margin is nearly linear that close to the boundary).
TARGET_MARGIN = NEWTON_TARGET
MAX_STEPS = NEWTON_STEPS


@torch.no_grad()
def fit_correction(G: GeneratorAdapter, net: MappingNetwork, latents: torch.Tensor, stream: int) -> MomentMap:
    """The moment map of a cluster whose mapping is ``net`` and whose latents are ``latents``; the
    mapping's moments come from MAPPED_SAMPLES inputs of the random stream ``stream``."""
    net = net.to(G.device).eval()
    mapped = net(draw_inputs(net, G.sample_latents, stream, 0, MAPPED_SAMPLES).to(G.device))
    return fit_moment_map(mapped.cpu(), latents.cpu())


def margin_function(G: GeneratorAdapter, tree: ClusterTree, path: str):
    """z -> the assignment margin of ``path`` (its own logit minus the best other one, "outside the
    parent" included): positive inside the cluster, differentiable in z."""
    parent = parent_of(path)
    guide = make_path_guide(G, tree, parent, tree.splits[parent])
    own = int(path.rsplit("/", 1)[-1])
    return lambda z: assignment_margin(guide(z), own)


def project_inside(
    G: GeneratorAdapter,
    tree: ClusterTree,
    path: str,
    z: torch.Tensor,
    max_steps: int = MAX_STEPS,
    target: float = TARGET_MARGIN,
    below: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` with every row outside cluster ``path`` moved by Newton steps on its margin m
    (z += (target - m) grad m / |grad m|^2) until it is inside; rows inside are untouched and
    every row is treated on its own. Returns the latents and a mask of the rows still outside after
    ``max_steps``. The caller fixes the batch (a step's rounding can depend on the rows beside).

    ``below`` > 0 moves every row whose margin is at most ``below``, not only those outside (deeper
    targets for bench/bench_distil.py; keep it under ``target``, or rows that reach it stay "low")."""
    return move_inside(margin_function(G, tree, path), z.to(G.device), max_steps, target, below)


def corrected(
    G: GeneratorAdapter, tree: ClusterTree, path: str, moment_map: MomentMap, mapped: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrected sampler on a batch of mapped latents: moment map, then projection."""
    with torch.no_grad():
        moved = moment_map.apply(mapped.to(G.device))
    return project_inside(G, tree, path, moved)
