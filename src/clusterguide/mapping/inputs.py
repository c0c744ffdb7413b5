"""What a mapping takes and is steered by: the prior its inputs e are drawn from, the guide's
assignment logits, and the numbered input streams that sampling and evaluation share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from clusterguide.seeding import randn_streams

if TYPE_CHECKING:
    from clusterguide.mapping.networks import MappingNetwork

# guide(z) -> (N, k) assignment logits at the clustering layer of the split being learned
Guide = Callable[[torch.Tensor], torch.Tensor]
# Draws n latents from the generator's own prior on CPU; the random stream is ``generator``'s.
Prior = Callable[[int, torch.Generator], torch.Tensor]


def assignment_margin(logits: torch.Tensor, own: int | torch.Tensor) -> torch.Tensor:
    """Each row's own logit minus its best other one: positive inside its cluster, differentiable.
    ``own`` is one index for every row, or a tensor of one index per row."""
    if isinstance(own, torch.Tensor):
        index = own.to(logits.device)[:, None]
    else:
        index = torch.full((logits.shape[0], 1), own, device=logits.device)
    return logits.gather(1, index)[:, 0] - logits.scatter(1, index, float("-inf")).max(1).values


def draw_inputs(
    net: MappingNetwork,
    sample_latents: Callable[[int, int, int], torch.Tensor],
    seed: int,
    start: int,
    n: int,
) -> torch.Tensor:
    """Inputs e number ``start .. start+n-1`` of the stream ``seed`` for ``net``: a residual mapping
    (T(e) = e + f(e)) takes the generator's prior, ``sample_latents(n, seed, start)``; the paper's
    mapping a standard Gaussian. For a N(0, I) prior the two are the same numbers."""
    if net.residual:
        return sample_latents(n, seed, start)
    return randn_streams(seed, start, n, net.aux_dim)


def standard_normal(dim: int) -> Prior:
    return lambda n, g: torch.randn(n, dim, generator=g)
