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

from dataclasses import dataclass

import torch

from clusterguide.generators.base import GeneratorAdapter
from clusterguide.guides import make_path_guide
from clusterguide.mapping import MappingNetwork, draw_inputs
from clusterguide.mapping.inputs import assignment_margin
from clusterguide.tree import ClusterTree, parent_of

# Samples of the mapping its moments are estimated from (the cluster's come from its latents).
MAPPED_SAMPLES = 8192
# Newton steps aim a stray sample at this assignment margin (in the guide's units, where a tenth of
# the mean squared gap between centroids is 1): just inside the boundary. One or two steps reach it
# for almost every sample (the margin is nearly linear that close to the boundary).
TARGET_MARGIN = 0.05
MAX_STEPS = 10


def shrunk_covariance(x: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf covariance of the rows of ``x``: the sample covariance shrunk toward a scaled
    identity by as much as its own estimation noise calls for (little with many rows per
    dimension, more for a small cluster in a large latent space, where the sample covariance is
    singular)."""
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = torch.trace(s) / d
    delta = (s - mu * torch.eye(d, dtype=x.dtype, device=x.device)).pow(2).sum() / d
    # the average squared deviation of a single row's outer product from s
    beta = ((xc.pow(2).sum(1).pow(2)).sum() / n - s.pow(2).sum()) / (d * n)
    shrink = float((beta.clamp(max=delta) / delta).clamp(0, 1)) if delta > 0 else 1.0
    return (1 - shrink) * s + shrink * mu * torch.eye(d, dtype=x.dtype, device=x.device)


def _sqrtm(c: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(c)
    values = values.clamp_min(1e-9 * float(values.max().clamp_min(1e-30)))
    return (vectors * (values.rsqrt() if inverse else values.sqrt())) @ vectors.T


@dataclass
class MomentMap:
    """z -> target_mean + (z - source_mean) A^T: the linear optimal transport map between the
    Gaussians with the mapping's and with the cluster's mean and covariance."""

    source_mean: torch.Tensor  # (D,)
    target_mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D), symmetric positive semi-definite

    KEYS = ("source_mean", "target_mean", "matrix")

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        m = self.matrix.to(z.device, z.dtype)
        return self.target_mean.to(z.device, z.dtype) + (z - self.source_mean.to(z.device, z.dtype)) @ m.T

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}::{key}": getattr(self, key).float().contiguous() for key in self.KEYS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, latent_dim: int) -> MomentMap:
        """The map saved under ``prefix``; ValueError naming what is missing or misshapen."""
        parts = {}
        for key, shape in zip(cls.KEYS, ((latent_dim,), (latent_dim,), (latent_dim, latent_dim))):
            t = tensors.get(f"{prefix}::{key}")
            if t is None or tuple(t.shape) != shape or not torch.isfinite(t).all():
                raise ValueError(f"{key} of {prefix} is missing, of the wrong shape or not finite")
            parts[key] = t.float()
        return cls(**parts)


def fit_moment_map(mapped: torch.Tensor, latents: torch.Tensor) -> MomentMap:
    """The map taking the mapping's samples ``mapped`` to the mean and covariance of the cluster's
    ``latents`` (both estimated with :func:`shrunk_covariance`, in float64)."""
    x, y = mapped.double(), latents.double()
    source, target = shrunk_covariance(x), shrunk_covariance(y)
    root = _sqrtm(source)
    inv_root = _sqrtm(source, inverse=True)
    matrix = inv_root @ _sqrtm(root @ target @ root) @ inv_root
    matrix = (matrix + matrix.T) / 2
    return MomentMap(x.mean(0).float(), y.mean(0).float(), matrix.float())


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
    margin = margin_function(G, tree, path)
    z = z.detach().clone().to(G.device)
    with torch.no_grad():
        outside = torch.nonzero(margin(z) <= below)[:, 0]
    # Only the rows still outside are carried on: a step moves nothing else, so nothing else needs
    # its margin again (the pass over every row is the expensive part at later layers).
    for _ in range(max_steps):
        if outside.numel() == 0:
            break
        with torch.enable_grad():
            x = z[outside].clone().requires_grad_(True)
            m = margin(x)
            (grad,) = torch.autograd.grad(m.sum(), x)
        step = (target - m.detach()) / grad.pow(2).sum(1).clamp_min(1e-12)
        z[outside] = z[outside] + step[:, None] * grad
        with torch.no_grad():
            outside = outside[margin(z[outside]) <= below]
    left = torch.zeros(z.shape[0], dtype=torch.bool)
    left[outside.cpu()] = True
    return z, left


def corrected(
    G: GeneratorAdapter, tree: ClusterTree, path: str, moment_map: MomentMap, mapped: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrected sampler on a batch of mapped latents: moment map, then projection."""
    with torch.no_grad():
        moved = moment_map.apply(mapped.to(G.device))
    return project_inside(G, tree, path, moved)
