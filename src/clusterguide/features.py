"""Representations G_[n](z): latents -> head at a named layer -> float32 feature rows.

Features are computed in batches under ``torch.no_grad`` and written into one preallocated float32
array, so peak memory is the result plus one batch. ``pool`` shrinks large feature maps by spatial
average pooling before flattening (useful for late layers of big generators).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clusterguide.errors import UserError
from clusterguide.generators.base import GeneratorAdapter
from clusterguide.progress import progress


def representation(G: GeneratorAdapter, z: torch.Tensor, layer: str, pool: int | None = None) -> torch.Tensor:
    """Flattened float32 features of ``z`` at ``layer`` (differentiable; no batching)."""
    h = G.head(z, layer)
    if pool is not None and h.dim() == 4 and h.shape[-1] > pool:
        h = F.adaptive_avg_pool2d(h, pool)
    return h.reshape(h.shape[0], -1).float()


def feature_dim(G: GeneratorAdapter, layer: str, pool: int | None = None) -> int:
    with torch.no_grad():
        return representation(G, G.sample_latents(1, 0).to(G.device), layer, pool).shape[1]


def check_pool(G: GeneratorAdapter, layer: str, pool: int | None) -> None:
    """``pool`` must shrink ``layer``'s feature maps (pool = their size changes nothing); a larger
    value, or pooling a layer without spatial maps, would be silently ignored."""
    if pool is None:
        return
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise UserError(f"--pool must be a whole number of at least 1 (got {pool!r})")
    with torch.no_grad():
        h = G.head(G.sample_latents(1, 0).to(G.device), layer)
    if h.dim() != 4:
        raise UserError(f"--pool: layer {layer} has no spatial feature maps to pool")
    if pool > h.shape[-1]:
        size = f"{h.shape[-2]}x{h.shape[-1]}"
        raise UserError(f"--pool {pool} is larger than layer {layer}'s {size} feature maps")


@torch.no_grad()
def extract_features(
    G: GeneratorAdapter,
    layer: str,
    latents: torch.Tensor,
    *,
    pool: int | None = None,
    batch_size: int = 512,
    desc: str | None = None,
) -> np.ndarray:
    """(N, F) float32 features of ``latents`` at ``layer``, computed batch by batch."""
    G.check_layer(layer)
    n = latents.shape[0]
    out = np.empty((n, feature_dim(G, layer, pool)), dtype=np.float32)
    starts = range(0, n, batch_size)
    for s in progress(starts, total=len(starts), desc=desc or f"features @ {layer}", unit="batch"):
        z = latents[s : s + batch_size].to(G.device)
        out[s : s + z.shape[0]] = representation(G, z, layer, pool).cpu().numpy()
    return out
