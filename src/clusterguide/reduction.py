"""A linear reduction of representations (PCA) for clustering at large N.

At ``block1`` of the default generator a latent has 8,192 features: a million of them are 33 GB.
Fitting at that scale keeps only a :class:`Reduction` of every feature row, a PCA to at most a few
hundred dimensions fitted on a subsample; k-means, assignment, the guides and the metrics of that
split all work in the reduced space, through :func:`split_features`. The reduction travels with
its split in the run folder (``clusters.safetensors``); a split without one uses the full
features, as every run made before reductions existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from clusterguide.errors import UserError
from clusterguide.features import representation

if TYPE_CHECKING:
    from clusterguide.generators.base import GeneratorAdapter
    from clusterguide.tree import Split


@dataclass
class Reduction:
    """x -> (x - mean) @ components."""

    mean: np.ndarray  # (F,) float32
    components: np.ndarray  # (F, d) float32, orthonormal columns (principal axes)
    explained: float = 0.0  # share of the subsample's variance the d axes keep
    samples: int = 0  # rows the PCA was fitted on

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable, on x's device."""
        mean = torch.from_numpy(self.mean).to(x.device)
        comps = torch.from_numpy(self.components).to(x.device)
        return (x - mean) @ comps

    def apply_numpy(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        out = np.empty((x.shape[0], self.dim), np.float32)
        for s in range(0, x.shape[0], chunk):
            out[s : s + chunk] = (x[s : s + chunk] - self.mean) @ self.components
        return out

    # ---- persistence (tensors in clusters.safetensors, numbers in config.json) -----------------
    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}:mean": torch.from_numpy(np.ascontiguousarray(self.mean)),
            f"{prefix}:components": torch.from_numpy(np.ascontiguousarray(self.components)),
        }

    def meta(self) -> dict:
        return {"dim": self.dim, "explained": self.explained, "samples": self.samples}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, meta: dict) -> Reduction:
        try:
            mean = tensors[f"{prefix}:mean"].numpy().astype(np.float32)
            comps = tensors[f"{prefix}:components"].numpy().astype(np.float32)
        except KeyError as exc:
            raise UserError(f"clusters.safetensors has no {exc.args[0]} (the reduction of a split)") from None
        if comps.ndim != 2 or mean.shape != (comps.shape[0],) or comps.shape[1] != meta.get("dim"):
            raise UserError(f"the reduction {prefix!r} has shapes {mean.shape} and {comps.shape}")
        return cls(mean, comps, float(meta.get("explained", 0.0)), int(meta.get("samples", 0)))


def fit_pca(features: np.ndarray, dim: int, seed: int = 0) -> Reduction:
    """PCA of ``features`` (rows) to ``dim`` axes by randomized SVD (seeded: same axes each time)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    n, f = x.shape
    dim = int(min(dim, n - 1, f))
    if dim < 1:
        raise UserError(f"a reduction needs at least 2 samples (got {n})")
    mean = x.mean(0)
    centred = x - mean
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Oversampling and power iterations make the randomized top axes match exact PCA closely.
        _, s, v = torch.svd_lowrank(centred, q=min(dim + 16, n, f), niter=4)
    # Total variance a chunk at a time: a float64 copy of the sample would double peak memory.
    total = sum(float(c.pow(2).sum(dtype=torch.float64)) for c in centred.split(1024))
    kept = float((s[:dim].double() ** 2).sum())
    comps = v[:, :dim].contiguous()
    # A sign convention, so that the axes do not depend on the SVD's arbitrary signs.
    signs = torch.sign(comps[comps.abs().argmax(0), torch.arange(dim)])
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    return Reduction(mean.numpy(), comps.numpy(), min(kept / total, 1.0) if total > 0 else 1.0, n)


def split_features(G: GeneratorAdapter, z: torch.Tensor, split: Split) -> torch.Tensor:
    """The features a split clusters on: the representation at its layer, reduced if it has a
    reduction (differentiable)."""
    feats = representation(G, z, split.layer, split.pool)
    return split.reduction.apply(feats) if split.reduction is not None else feats
