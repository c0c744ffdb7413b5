"""Assignment guides: differentiable cluster logits at a split's layer, for a single split
(:func:`make_guide`) or along a refined cluster's whole path (:func:`make_path_guide`). The
mappings' consistency term and the fast recipe's subspace choice are steered by them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clusterguide.generators.base import GeneratorAdapter
from clusterguide.mapping.inputs import assignment_margin
from clusterguide.reduction import split_features
from clusterguide.tree import ClusterTree, Split, parent_of


def make_guide(G: GeneratorAdapter, split: Split):
    """Assignment logits at the split's layer: -|f - c_j|^2 / scale, where scale is a tenth of the
    mean squared gap between centroids (so well-inside samples give near one-hot assignments)."""
    c = torch.from_numpy(split.centroids).to(G.device)
    gaps = torch.cdist(c, c).pow(2)
    scale = float(gaps.sum() / max(c.shape[0] * (c.shape[0] - 1), 1)) * 0.1
    c_sq = (c * c).sum(1)

    def guide(z: torch.Tensor) -> torch.Tensor:
        f = split_features(G, z.to(G.device), split)
        d = (f * f).sum(1, keepdim=True) - 2 * f @ c.T + c_sq
        return -d / scale

    return guide


def make_path_guide(G: GeneratorAdapter, tree: ClusterTree, parent: str, split: Split):
    """The guide for the children of ``parent``: the sibling logits of ``split`` and one more column,
    "outside the path", that beats every sibling by how far a sample is outside ``parent``'s cluster
    at any split above it. A leaf is the intersection of one cell per split along its path, and the
    siblings' cells alone reach far outside the parent: without this column the consistency hinge
    happily moves a refined cluster's samples out of its parent.

    Inside the parent the column sits below the best sibling by the parent's own margin (the least
    over the splits above), so a child's margin is the smaller of its margin among its siblings and
    its parent's: positive and differentiable inside, as for a flat cluster. (A column level with
    the best sibling there gave every member margin 0 and gradient 0: the subspace choice then
    picked arbitrary directions for refined clusters, and the corrected sampler took every member
    for a stray.) Outside the parent the column is what it was, and no argmax changes: inside, the
    best sibling won the tie before and wins outright now."""
    base = make_guide(G, split)
    if not parent:
        return base
    above = [
        (make_guide(G, tree.splits[parent_of(node)]), int(node.rsplit("/", 1)[-1]))
        for node in tree.ancestors(parent)
    ]

    def guide(z: torch.Tensor) -> torch.Tensor:
        logits = base(z)
        margins = torch.stack([assignment_margin(ancestor(z), index) for ancestor, index in above], 1)
        # outside: the sum of how far out at each split (zero inside); inside: minus the least margin
        shift = F.relu(-margins).sum(1) - F.relu(margins.min(1).values)
        return torch.cat([logits, logits.max(1, keepdim=True).values + shift[:, None]], 1)

    return guide
